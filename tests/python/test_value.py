"""shmipc.SharedValue (API.md sections 0 and 4): values, versions, waits, notification, crashes."""

from __future__ import annotations

import os
import pickle
import queue
import signal
import stat
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np
import pytest

import shmipc
from shmipc import CorruptSegmentError, SharedValue

import workers_values as w
from testutil import join_all

# ---- single-process semantics ----------------------------------------------------------------


def test_a_new_value_is_empty_with_version_zero(name: str) -> None:
    with SharedValue.create(name, 128) as v:
        assert v.read() is None
        assert v.version == 0
        assert v.size == 128
        assert v.owner and not v.persistent and not v.readonly
        assert v.name == "/" + name


@pytest.mark.parametrize(
    "value",
    [
        "text",
        "",
        "héllo wörld ✓",
        b"bytes",
        b"",
        np.arange(4, dtype=np.float32),
        np.arange(24, dtype=np.int64).reshape(2, 3, 4),
        np.array(3.5),
        np.zeros((0, 5), dtype=np.uint16),
        np.array([True, False]),
        np.array([1 + 2j, 3 - 4j], dtype=np.complex128),
        np.arange(6, dtype=">i4").reshape(2, 3),
        np.array(["ab", "cde"], dtype="U3"),
        np.array(["2020-01-01", "2021-06-30"], dtype="datetime64[D]"),
        np.array([(1, 2.5, b"x")], dtype=[("a", "<i4"), ("b", "<f8"), ("c", "S2")]),
        np.array([1.5, 2.5], dtype=np.float16),
    ],
    ids=repr,
)
def test_values_come_back_with_their_type_dtype_and_shape(name: str, value: Any) -> None:
    with SharedValue.create(name, 1024) as v, SharedValue.attach(name) as r:
        v.write(value)
        got = r.read()
        assert type(got) is type(value)
        if isinstance(value, np.ndarray):
            assert got.dtype == value.dtype
            assert got.shape == value.shape
            np.testing.assert_array_equal(got, value)
            assert got.flags.writeable and got.flags.c_contiguous
        else:
            assert got == value


def test_bytearray_and_memoryview_are_written_as_bytes(name: str) -> None:
    with SharedValue.create(name, 64) as v:
        v.write(bytearray(b"abc"))
        assert v.read() == b"abc"
        v.write(memoryview(b"xyz"))
        assert v.read() == b"xyz"


def test_non_contiguous_arrays_are_written_contiguous(name: str) -> None:
    a = np.arange(20, dtype=np.int32).reshape(4, 5)
    with SharedValue.create(name, 1024) as v:
        v.write(a.T)
        np.testing.assert_array_equal(v.read(), a.T)
        v.write(a[:, ::2])
        np.testing.assert_array_equal(v.read(), a[:, ::2])


def test_numpy_scalars_are_written_as_0d_arrays(name: str) -> None:
    with SharedValue.create(name, 64) as v:
        v.write(np.float32(1.5))
        got = v.read()
        assert isinstance(got, np.ndarray) and got.shape == () and got.dtype == np.float32
        assert got == 1.5


def test_mode_must_be_permission_bits(name: str) -> None:
    with pytest.raises(ValueError):
        SharedValue.create(name, 64, mode=0o170000)
    with pytest.raises(TypeError):
        SharedValue.create(name, 64, mode="0o600")  # type: ignore[arg-type]


def test_read_returns_a_private_copy(name: str) -> None:
    with SharedValue.create(name, 64) as v:
        v.write(np.zeros(4))
        got = v.read()
        assert isinstance(got, np.ndarray)
        got[:] = 7
        np.testing.assert_array_equal(v.read(), np.zeros(4))


def test_object_arrays_and_other_types_are_refused(name: str) -> None:
    with SharedValue.create(name, 1024) as v:
        with pytest.raises(TypeError):
            v.write(np.array([object()]))
        with pytest.raises(TypeError):
            v.write(42)  # type: ignore[arg-type]
        assert v.version == 0


def test_a_value_larger_than_size_is_a_ValueError_and_the_old_value_stays(name: str) -> None:
    with SharedValue.create(name, 16) as v:
        v.write(b"0123456789abcdef")  # exactly fits
        with pytest.raises(ValueError, match="exceeds the capacity"):
            v.write(b"x" * 17)
        with pytest.raises(ValueError):
            v.write(np.zeros(3))  # 24 bytes
        with pytest.raises(ValueError):
            v.write("é" * 9)  # 18 UTF-8 bytes
        assert v.read() == b"0123456789abcdef"
        assert v.version == 1


def test_version_increases_on_every_write_even_with_equal_values(name: str) -> None:
    with SharedValue.create(name, 64) as v, SharedValue.attach(name) as r:
        versions = []
        for _ in range(5):
            versions.append(v.write(b"same"))
        assert versions == [1, 2, 3, 4, 5]
        assert r.version == 5
        assert r.read_versioned() == (5, b"same")


@pytest.mark.parametrize("size", [0, -1])
def test_nonpositive_size_is_a_ValueError(name: str, size: int) -> None:
    with pytest.raises(ValueError):
        SharedValue.create(name, size)


@pytest.mark.parametrize("bad", ["", "/", "a/b", "//a", "a\0b", "x" * 201, ".", ".."])
def test_invalid_names_are_a_ValueError(bad: str) -> None:
    with pytest.raises(ValueError):
        SharedValue.create(bad, 64)
    with pytest.raises(ValueError):
        SharedValue.attach(bad)


def test_attach_of_a_missing_name_is_FileNotFoundError(name: str) -> None:
    with pytest.raises(FileNotFoundError):
        SharedValue.attach(name)


def test_create_over_a_live_value_is_FileExistsError(name: str) -> None:
    with SharedValue.create(name, 64):
        with pytest.raises(FileExistsError):
            SharedValue.create(name, 64)


def test_owner_close_removes_the_name_and_attached_readers_keep_working(name: str) -> None:
    v = SharedValue.create(name, 64)
    r = SharedValue.attach(name)
    v.write(b"last")
    v.close()
    assert not os.path.exists(f"/dev/shm/{name}")
    assert r.read() == b"last"
    r.close()


def test_a_persistent_value_outlives_its_owner_until_unlink(name: str) -> None:
    with SharedValue.create(name, 64, persistent=True) as v:
        v.write("kept")
        assert v.persistent
    with SharedValue.attach(name) as r:
        assert r.read() == "kept"
        assert not r.owner
    shmipc.unlink(name)
    with pytest.raises(FileNotFoundError):
        SharedValue.attach(name)


def test_mode_bits_are_exact_whatever_the_umask(name: str) -> None:
    old = os.umask(0o077)
    try:
        with SharedValue.create(name, 64, mode=0o664):
            assert stat.S_IMODE(os.stat(f"/dev/shm/{name}").st_mode) == 0o664
    finally:
        os.umask(old)


def test_closed_value_raises_ValueError_and_close_is_idempotent(name: str) -> None:
    v = SharedValue.create(name, 64)
    v.close()
    v.close()
    assert v.closed
    for op in (v.read, lambda: v.write(b"x"), lambda: v.version, lambda: v.wait(0)):
        with pytest.raises(ValueError, match="closed"):
            op()
    with pytest.raises(ValueError, match="closed"):
        v.on_change(print)
    assert "closed" in repr(v)


# ---- corrupt segments ----------------------------------------------------------------------


def _write_file(name: str, data: bytes) -> None:
    with open(f"/dev/shm/{name}", "wb") as f:
        f.write(data)


@pytest.mark.parametrize(
    "content",
    [b"", b"\0" * 10, b"garbage" * 100, b"\0" * 8192],
    ids=["empty", "tiny", "text", "zeros"],
)
def test_attach_of_something_that_is_not_a_value_is_CorruptSegmentError(
    name: str, content: bytes
) -> None:
    _write_file(name, content)
    try:
        with pytest.raises(CorruptSegmentError):
            SharedValue.attach(name)
    finally:
        os.unlink(f"/dev/shm/{name}")


def test_attach_of_a_truncated_value_is_CorruptSegmentError_not_SIGBUS(name: str) -> None:
    with SharedValue.create(name, 4096, persistent=True) as v:
        v.write(b"x" * 4096)
    path = f"/dev/shm/{name}"
    full = os.path.getsize(path)
    try:
        for size in (full // 2, 200, 64):
            os.truncate(path, size)
            with pytest.raises(CorruptSegmentError):
                SharedValue.attach(name)
    finally:
        shmipc.unlink(name)


def test_attach_of_a_value_with_a_forged_capacity_is_CorruptSegmentError(name: str) -> None:
    with SharedValue.create(name, 4096, persistent=True):
        pass
    path = f"/dev/shm/{name}"
    try:
        with open(path, "r+b") as f:
            f.seek(64 + 80)  # ValueControl.capacity: after the mutex line, version and current
            f.write((1 << 50).to_bytes(8, "little"))
        with pytest.raises(CorruptSegmentError):
            SharedValue.attach(name)
    finally:
        shmipc.unlink(name)


def test_attach_of_a_stream_is_CorruptSegmentError(name: str) -> None:
    with shmipc.open_stream(name, "w+b", owner=True) as f:
        f.write(b"\0" * 10000)
        f.flush()
        with pytest.raises(CorruptSegmentError):
            SharedValue.attach(name)


# ---- waiting -------------------------------------------------------------------------------


def test_wait_after_an_own_write_waits_for_the_next_change(name: str) -> None:
    with SharedValue.create(name, 64) as v, SharedValue.attach(name) as other:
        v.write(b"mine")
        with pytest.raises(TimeoutError):
            v.wait(timeout=0)
        other.write(b"theirs")
        assert v.wait(timeout=0) == 2


def test_wait_times_out_with_TimeoutError(name: str) -> None:
    with SharedValue.create(name, 64) as v:
        with pytest.raises(TimeoutError):
            v.wait(timeout=0)
        with pytest.raises(TimeoutError):
            v.wait(timeout=0.05)


def test_wait_returns_at_once_if_a_newer_version_exists(name: str) -> None:
    with SharedValue.create(name, 64) as v, SharedValue.attach(name) as r:
        v.write(b"a")
        v.write(b"b")
        assert r.wait(timeout=0) == 2  # since=None: the version seen at attach (0)
        with pytest.raises(TimeoutError):
            r.wait(timeout=0)  # nothing newer than 2 now
        assert r.wait(timeout=0, since=1) == 2
        with pytest.raises(ValueError):
            r.wait(timeout=0, since=-1)


def test_wait_wakes_when_another_process_writes(name: str, spawn: Any) -> None:
    with SharedValue.create(name, 64) as v:
        ready = spawn.Event()
        q = spawn.Queue()
        p = spawn.Process(target=w.value_wait_then_report, args=(name, ready, q, 30.0))
        p.start()
        assert ready.wait(30)
        time.sleep(0.2)  # let it go to sleep on the futex
        v.write("wake up")
        version, value, _waited = q.get(timeout=30)
        join_all([p])
        assert (version, value) == (1, "wake up")


def test_wait_in_another_process_times_out(name: str, spawn: Any) -> None:
    with SharedValue.create(name, 64):
        ready = spawn.Event()
        q = spawn.Queue()
        p = spawn.Process(target=w.value_wait_then_report, args=(name, ready, q, 0.3))
        p.start()
        status, _, waited = q.get(timeout=30)
        join_all([p])
        assert status == "timeout"
        assert waited >= 0.29


def test_wait_is_interrupted_by_ctrl_c(name: str, spawn: Any) -> None:
    with SharedValue.create(name, 64):
        ready = spawn.Event()
        q = spawn.Queue()
        p = spawn.Process(target=w.value_wait_forever, args=(name, ready, q))
        p.start()
        assert ready.wait(30)
        time.sleep(0.3)
        assert p.pid is not None
        os.kill(p.pid, signal.SIGINT)
        outcome, _ = q.get(timeout=30)
        join_all([p])
        assert outcome == "KeyboardInterrupt"


def test_wait_releases_the_gil(name: str) -> None:
    with SharedValue.create(name, 64) as v:
        t = threading.Thread(target=lambda: pytest.raises(TimeoutError, v.wait, 1.0))
        t.start()
        time.sleep(0.05)
        spins = 0
        end = time.monotonic() + 0.3
        while time.monotonic() < end:  # would not run while wait() held the GIL
            spins += 1
        assert t.is_alive()
        t.join(10)
        assert spins > 1000


def test_close_ends_a_wait_blocked_in_another_thread(name: str) -> None:
    v = SharedValue.create(name, 64)
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            v.wait(timeout=30)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.2)
    v.close()
    t.join(10)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ValueError)


# ---- on_change -----------------------------------------------------------------------------


def test_on_change_delivers_new_values_from_a_background_thread(name: str) -> None:
    got: queue.Queue[Any] = queue.Queue()
    with SharedValue.create(name, 64) as v, SharedValue.attach(name) as r:
        sub = r.on_change(lambda x: got.put((x, threading.current_thread().name)))
        v.write("one")
        value, thread = got.get(timeout=10)
        assert value == "one" and thread.startswith("shmipc-on-change")
        v.write(b"two")
        assert got.get(timeout=10)[0] == b"two"
        sub.stop()
        assert not sub.running
        v.write("three")
        with pytest.raises(queue.Empty):
            got.get(timeout=0.3)


def test_on_change_in_another_process_sees_the_final_value(name: str, spawn: Any) -> None:
    with SharedValue.create(name, 64) as v:
        ready = spawn.Event()
        q = spawn.Queue()
        p = spawn.Process(target=w.value_on_change_collect, args=(name, ready, q, "9", 30.0))
        p.start()
        assert ready.wait(30)
        time.sleep(0.2)
        for i in range(10):
            v.write(str(i))
            time.sleep(0.01)
        seen, still_running = q.get(timeout=30)
        join_all([p])
        assert seen[-1] == "9"
        assert seen == sorted(seen, key=int)  # in order (possibly coalesced)
        assert not still_running


def test_close_stops_every_subscription(name: str) -> None:
    with SharedValue.create(name, 64) as v:
        subs = [v.on_change(lambda x: None) for _ in range(3)]
    assert not any(s.running for s in subs)


def test_callback_errors_go_to_on_error_and_delivery_continues(name: str) -> None:
    errors: queue.Queue[BaseException] = queue.Queue()
    got: queue.Queue[Any] = queue.Queue()

    def cb(x: Any) -> None:
        if x == "bad":
            raise RuntimeError("boom")
        got.put(x)

    with SharedValue.create(name, 64) as v, v.on_change(cb, on_error=errors.put):
        v.write("bad")
        assert isinstance(errors.get(timeout=10), RuntimeError)
        v.write("good")
        assert got.get(timeout=10) == "good"


def test_a_callback_may_stop_its_own_subscription(name: str) -> None:
    done = threading.Event()
    with SharedValue.create(name, 64) as v:
        holder: list[Any] = []

        def cb(x: Any) -> None:
            holder[0].stop()
            done.set()

        holder.append(v.on_change(cb))
        v.write("x")
        assert done.wait(10)
        holder[0]._thread.join(10)
        assert not holder[0].running


# ---- several processes ---------------------------------------------------------------------


def test_another_process_reads_the_value_and_writes_back(name: str, spawn: Any) -> None:
    with SharedValue.create(name, 256) as v:
        v.write(np.arange(6, dtype=np.int16).reshape(2, 3))
        q = spawn.Queue()
        p = spawn.Process(target=w.value_read_and_reply, args=(name, "thanks", q))
        p.start()
        version, (dtype, values) = q.get(timeout=30)
        join_all([p])
        assert version == 1 and dtype == "<i2" and values == [[0, 1, 2], [3, 4, 5]]
        assert v.read() == "thanks" and v.version == 2


def test_values_travel_to_children_by_name(name: str, spawn: Any) -> None:
    with SharedValue.create(name, 64) as v:
        v.write("hello")
        clone = pickle.loads(pickle.dumps(v))
        assert clone.read() == "hello" and not clone.owner
        clone.close()
        q = spawn.Queue()
        # The SharedValue itself is the argument: it is re-attached by name in the child.
        p = spawn.Process(target=_read_from_arg, args=(v, q))
        p.start()
        assert q.get(timeout=30) == "hello"
        join_all([p])


def test_a_forked_child_closing_an_inherited_owner_handle_keeps_the_name(name: str) -> None:
    fork = __import__("multiprocessing").get_context("fork")
    with SharedValue.create(name, 64) as v:
        v.write(b"parent's")
        q = fork.Queue()
        p = fork.Process(target=w.close_inherited, args=(v, q))
        p.start()
        assert q.get(timeout=30) == "closed"
        join_all([p])
        assert os.path.exists(f"/dev/shm/{name}")
        assert v.read() == b"parent's"
    assert not os.path.exists(f"/dev/shm/{name}")


def _read_from_arg(v: SharedValue, q: Any) -> None:
    q.put(v.read())
    v.close()


def test_a_stale_value_of_a_killed_owner_is_replaced(name: str, spawn: Any) -> None:
    ready = spawn.Event()
    p = spawn.Process(target=w.value_create_and_die, args=(name, ready))
    p.start()
    join_all([p])
    assert p.exitcode == -signal.SIGKILL
    assert os.path.exists(f"/dev/shm/{name}")
    with SharedValue.create(name, 64) as v:
        assert v.read() is None


def test_a_reader_without_write_permission_attaches_read_only(name: str, spawn: Any) -> None:
    with SharedValue.create(name, 64, mode=0o644) as v:
        v.write(b"public")
        q = spawn.Queue()
        p = spawn.Process(target=w.value_attach_as_nobody, args=(name, q))
        p.start()
        result = q.get(timeout=30)
        join_all([p])
        assert result == [True, b"public", "PermissionError"]


def test_torn_read_hammer_with_two_writers_and_two_readers(name: str, spawn: Any) -> None:
    seconds = 3.0
    with SharedValue.create(name, 1 << 20) as v:
        v.write(np.full(1, 1_000_000_001.0))
        q = spawn.Queue()
        procs = [
            spawn.Process(target=w.value_hammer_writer, args=(name, i, seconds, q)) for i in (1, 2)
        ] + [
            spawn.Process(target=w.value_hammer_reader, args=(name, i, seconds, q)) for i in (1, 2)
        ]
        for p in procs:
            p.start()
        results = [q.get(timeout=120) for _ in procs]
        join_all(procs)
        writes = sum(r[2] for r in results if r[0] == "writer")
        readers = [r for r in results if r[0] == "reader"]
        assert writes > 10
        for _, _, reads, torn, versions_ok in readers:
            assert reads > 0
            assert torn == 0
            assert versions_ok
        assert v.version == writes + 1


def test_a_writer_killed_mid_write_leaves_the_last_value_and_no_orphaned_lock(
    name: str, spawn: Any
) -> None:
    nbytes = 1 << 20
    with SharedValue.create(name, nbytes) as v:
        p = spawn.Process(target=w.value_write_and_hang, args=(name, b"complete", 0xAB, nbytes))
        p.start()
        # Wait until the child holds the lock with the non-current slot half written (odd seq).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            current, seq0, seq1 = v._handle._debug_state()
            if v.version == 1 and (seq0, seq1)[1 - current] % 2 == 1:
                break
            time.sleep(0.01)
        else:
            p.kill()
            pytest.fail("writer never reached the middle of its write")
        assert p.pid is not None
        os.kill(p.pid, signal.SIGKILL)
        join_all([p])
        with SharedValue.attach(name) as r:
            assert r.read() == b"complete"
            assert r.version == 1
            r.write(b"next writer")  # would hang forever on an orphaned lock
            assert v.read() == b"next writer"
            assert v.version == 2
            assert v.writer_deaths == 1
            v.write(np.full(nbytes, 3, dtype=np.uint8))
            got = r.read()
            assert isinstance(got, np.ndarray) and (got == 3).all()


def test_writers_sigkilled_at_random_moments_never_expose_a_torn_value(
    name: str, spawn: Any
) -> None:
    nbytes = 4 << 20
    rng = np.random.default_rng(7)
    with SharedValue.create(name, nbytes) as v:
        for _ in range(5):
            started = spawn.Event()
            p = spawn.Process(target=w.value_write_forever, args=(name, nbytes, started))
            p.start()
            assert started.wait(30)
            time.sleep(float(rng.uniform(0.05, 0.3)))
            p.kill()
            join_all([p])
            got = v.read()
            assert isinstance(got, np.ndarray) and got.size == nbytes
            assert (got == got[0]).all()
            before = v.version
            v.write(np.full(nbytes, 255, dtype=np.uint8))  # the lock is never orphaned
            assert v.version == before + 1


def test_create_attach_close_many_times_leaks_no_fd(name: str, no_fd_leaks: None) -> None:
    for _ in range(300):
        with SharedValue.create(name, 64) as v, SharedValue.attach(name) as r:
            v.write(b"x")
            r.read()
            r.on_change(lambda x: None)


_EXIT_SCRIPT = """
import sys, threading, time, shmipc
name = sys.argv[1]
v = shmipc.SharedValue.create(name, 1 << 20)
v.on_change(lambda x: None)
threading.Thread(target=lambda: v.wait(timeout=100), daemon=True).start()
threading.Thread(target=lambda: [v.read() for _ in range(10**9)], daemon=True).start()
f = shmipc.open_stream(name + ".s", "w+b", owner=True)
f.write(b"x")
time.sleep(0.3)
"""


def test_exit_with_threads_inside_waits_is_clean_and_removes_owned_names(name: str) -> None:
    # CPython tears down daemon threads that re-enter Python during finalization; one still
    # inside the engine with the GIL released would abort the process (C++ forced unwind).
    r = subprocess.run(
        [sys.executable, "-c", _EXIT_SCRIPT, name], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(f"/dev/shm/{name}")
    assert not os.path.exists(f"/dev/shm/{name}.s")
