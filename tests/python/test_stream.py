"""shmipc.open_stream (API.md sections 0 and 3): real io objects over real shm fds."""

from __future__ import annotations

import io
import mmap
import os
import shutil
import signal
import stat
from typing import Any

import numpy as np
import pytest

import shmipc
from shmipc import open_stream

import workers_values as w
from testutil import join_all


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _exists(name: str) -> bool:
    return os.path.exists(f"/dev/shm/{name}")


# ---- io objects ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "io_mode, owner, cls",
    [
        ("w+b", True, io.BufferedRandom),
        ("wb", True, io.BufferedWriter),
        ("rb", False, io.BufferedReader),
        ("r+b", False, io.BufferedRandom),
        ("ab", False, io.BufferedWriter),
        ("w+", True, io.TextIOWrapper),
        ("r", False, io.TextIOWrapper),
    ],
)
def test_modes_give_the_matching_io_classes(
    name: str, io_mode: str, owner: bool, cls: type
) -> None:
    with open_stream(name, "w+b", owner=True):
        if owner:
            shmipc.unlink(name)
        with open_stream(name, io_mode, owner=owner) as f:
            assert isinstance(f, cls)
            assert f.name == "/" + name
            assert f.fileno() >= 0


def test_unbuffered_binary_gives_the_raw_FileIO(name: str) -> None:
    with open_stream(name, "w+b", owner=True, buffering=0) as f:
        assert isinstance(f, io.FileIO)
        assert f.write(b"abc") == 3


def test_owner_writes_and_guest_reads_seeks_and_truncates(name: str) -> None:
    with open_stream(name, "w+b", owner=True) as f:
        f.write(b"hello world")
        f.flush()
        with open_stream(name, "rb") as g:
            assert g.read() == b"hello world"
            g.seek(6)
            assert g.read(5) == b"world"
        f.seek(0)
        assert f.read() == b"hello world"
        f.truncate(5)
        f.seek(0)
        assert f.read() == b"hello"
        assert os.path.getsize(f"/dev/shm/{name}") == 5


def test_os_read_and_os_write_work_on_the_fd(name: str) -> None:
    with open_stream(name, "w+b", owner=True, buffering=0) as f:
        assert os.write(f.fileno(), b"raw bytes") == 9
        os.lseek(f.fileno(), 0, os.SEEK_SET)
        assert os.read(f.fileno(), 100) == b"raw bytes"


def test_mmap_of_the_stream_sees_the_same_bytes(name: str) -> None:
    with open_stream(name, "w+b", owner=True) as f:
        f.write(b"\0" * 4096)
        f.flush()
        with mmap.mmap(f.fileno(), 4096) as m:
            m[:5] = b"mmap!"
        f.seek(0)
        assert f.read(5) == b"mmap!"


def test_shutil_copyfileobj_numpy_fromfile_and_print(name: str) -> None:
    arr = np.arange(1000, dtype=np.float64)
    with open_stream(name, "w+b", owner=True) as f:
        shutil.copyfileobj(io.BytesIO(arr.tobytes()), f)
        f.flush()
        f.seek(0)
        np.testing.assert_array_equal(np.fromfile(f, dtype=np.float64), arr)
        f.seek(0)
        out = io.BytesIO()
        shutil.copyfileobj(f, out)
        assert out.getvalue() == arr.tobytes()
    with open_stream(name, "w+", owner=True) as t:
        print("answer", 42, file=t)
        print("ünïcode", file=t)
        t.seek(0)
        assert t.read() == "answer 42\nünïcode\n"
        assert t.encoding == "utf-8"


def test_text_mode_guest_reads_lines(name: str) -> None:
    with open_stream(name, "w", owner=True) as t:
        t.write("a\nb\n")
        t.flush()
        with open_stream(name, "r") as g:
            assert g.readlines() == ["a\n", "b\n"]


def test_guest_w_truncates_and_a_appends(name: str) -> None:
    with open_stream(name, "w+b", owner=True) as f:
        f.write(b"0123456789")
        f.flush()
        with open_stream(name, "ab") as g:
            g.write(b"AB")
        assert os.path.getsize(f"/dev/shm/{name}") == 12
        with open_stream(name, "wb") as g:
            g.write(b"new")
        f.seek(0)
        assert f.read() == b"new"


@pytest.mark.parametrize("bad", ["", "q", "rw", "rr", "rbt", "b", "+"])
def test_invalid_io_modes_are_a_ValueError(name: str, bad: str) -> None:
    with pytest.raises(ValueError):
        open_stream(name, bad, owner=True)
    assert not _exists(name)


def test_bad_argument_combinations_are_a_ValueError(name: str) -> None:
    with pytest.raises(ValueError):
        open_stream(name, "wb", owner=True, encoding="utf-8")
    with pytest.raises(ValueError):
        open_stream(name, "w", owner=True, buffering=0)
    with open_stream(name, "wb", owner=True):
        with pytest.raises(ValueError):
            open_stream(name, "xb")  # creating is the owner's job
        with pytest.raises(ValueError):
            open_stream(name, "rb", persistent=True)
    assert not _exists(name)


def test_closed_stream_raises_ValueError_and_close_is_idempotent(name: str) -> None:
    f = open_stream(name, "w+b", owner=True)
    f.close()
    f.close()
    assert f.closed
    with pytest.raises(ValueError):
        f.write(b"x")
    with pytest.raises(ValueError):
        f.read()


# ---- names, ownership, lifetime ------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "/", "a/b", "//a", "a\0b", "x" * 201, ".", ".."])
def test_invalid_names_are_a_ValueError(bad: str) -> None:
    with pytest.raises(ValueError):
        open_stream(bad, "w+b", owner=True)
    with pytest.raises(ValueError):
        open_stream(bad, "rb")


def test_a_leading_slash_names_the_same_stream(name: str) -> None:
    with open_stream("/" + name, "w+b", owner=True) as f:
        f.write(b"x")
        f.flush()
        with open_stream(name, "rb") as g:
            assert g.read() == b"x"


def test_guest_open_of_a_missing_name_is_FileNotFoundError(name: str) -> None:
    for m in ("rb", "r+b", "wb", "ab", "r"):
        with pytest.raises(FileNotFoundError):
            open_stream(name, m)
    assert not _exists(name)


def test_owner_close_removes_the_name_and_guest_close_does_not(name: str) -> None:
    f = open_stream(name, "w+b", owner=True)
    g = open_stream(name, "rb")
    g.close()
    assert _exists(name)
    f.write(b"data")
    f.flush()
    g = open_stream(name, "rb")
    f.close()
    assert not _exists(name)
    assert g.read() == b"data"  # a guest keeps working on its open file
    g.close()


def test_owner_close_through_garbage_collection_removes_the_name(name: str) -> None:
    f = open_stream(name, "w+b", owner=True)
    f.close()  # explicit close; GC of an unclosed file would warn (ResourceWarning)
    assert not _exists(name)


def test_a_persistent_stream_stays_until_unlink(name: str) -> None:
    with open_stream(name, "w+b", owner=True, persistent=True) as f:
        f.write(b"kept")
    assert _exists(name)
    info = shmipc.stream_info(name)
    assert info == {"is_stream": True, "persistent": True, "owner_alive": False, "size": 4}
    with open_stream(name, "rb") as g:
        assert g.read() == b"kept"
    # Even with its owner gone, a persistent stream is never replaced as stale.
    with pytest.raises(FileExistsError):
        open_stream(name, "w+b", owner=True)
    shmipc.unlink(name)
    assert not _exists(name)


def test_create_over_a_live_stream_in_another_process_is_FileExistsError(
    name: str, spawn: Any
) -> None:
    ready, done = spawn.Event(), spawn.Event()
    p = spawn.Process(target=w.stream_owner_then_wait, args=(name, ready, done))
    p.start()
    try:
        assert ready.wait(30)
        assert shmipc.stream_info(name)["owner_alive"]
        with pytest.raises(FileExistsError):
            open_stream(name, "w+b", owner=True)
        with open_stream(name, "rb") as g:
            assert g.read() == b"from the first owner"
    finally:
        done.set()
        join_all([p])
    assert not _exists(name)


def test_a_forked_child_closing_an_inherited_owner_stream_keeps_the_name(name: str) -> None:
    fork = __import__("multiprocessing").get_context("fork")
    with open_stream(name, "w+b", owner=True) as f:
        q = fork.Queue()
        p = fork.Process(target=w.close_inherited, args=(f, q))
        p.start()
        assert q.get(timeout=30) == "closed"
        join_all([p])
        assert _exists(name)
    assert not _exists(name)


def test_the_stale_stream_of_a_killed_owner_is_replaced(name: str, spawn: Any) -> None:
    ready, done = spawn.Event(), spawn.Event()
    p = spawn.Process(target=w.stream_owner_then_wait, args=(name, ready, done))
    p.start()
    assert ready.wait(30)
    p.kill()
    join_all([p])
    assert _exists(name)
    assert shmipc.stream_info(name)["owner_alive"] is False
    with open_stream(name, "w+b", owner=True) as f:
        assert f.read() == b""  # a new, empty stream
        assert shmipc.stream_info(name)["owner_alive"] is True
    assert not _exists(name)


def test_a_file_that_is_not_a_shmipc_stream_is_never_replaced(name: str) -> None:
    with open(f"/dev/shm/{name}", "wb") as plain:
        plain.write(b"someone else's")
    try:
        assert shmipc.stream_info(name)["is_stream"] is False
        with pytest.raises(FileExistsError):
            open_stream(name, "w+b", owner=True)
        with open_stream(name, "rb") as g:  # but guests may read any shm file
            assert g.read() == b"someone else's"
    finally:
        os.unlink(f"/dev/shm/{name}")


def test_a_guest_in_another_process_reads_and_appends(name: str, spawn: Any) -> None:
    with open_stream(name, "w+b", owner=True) as f:
        f.write(b"parent line\n")
        f.flush()
        q = spawn.Queue()
        p = spawn.Process(target=w.stream_guest_echo, args=(name, q))
        p.start()
        assert q.get(timeout=30) == b"parent line\n"
        join_all([p])
        f.seek(0)
        assert f.read() == b"parent line\nchild was here\n"
    assert not _exists(name)


def test_mode_bits_are_exact_whatever_the_umask(name: str) -> None:
    old = os.umask(0o077)
    try:
        with open_stream(name, "w+b", owner=True, mode=0o664):
            assert stat.S_IMODE(os.stat(f"/dev/shm/{name}").st_mode) == 0o664
    finally:
        os.umask(old)
    with pytest.raises(ValueError):
        open_stream(name, "w+b", owner=True, mode=0o170000)
    assert not _exists(name)


def test_chmod_and_chgrp_helpers(name: str) -> None:
    with open_stream(name, "w+b", owner=True, mode=0o600):
        shmipc.chmod(name, 0o640)
        assert stat.S_IMODE(os.stat(f"/dev/shm/{name}").st_mode) == 0o640
        gid = os.getgid()
        shmipc.chgrp(name, gid)
        shmipc.chgrp("/" + name, __import__("grp").getgrgid(gid).gr_name)
        assert os.stat(f"/dev/shm/{name}").st_gid == gid
        with pytest.raises(ValueError):
            shmipc.chgrp(name, "no-such-group-hopefully")
    with pytest.raises(FileNotFoundError):
        shmipc.chmod(name, 0o600)


def test_a_guest_r_plus_falls_back_to_read_only_when_the_bits_grant_only_read(
    name: str, spawn: Any
) -> None:
    with open_stream(name, "w+b", owner=True, mode=0o644) as f:
        f.write(b"readable")
        f.flush()
        q = spawn.Queue()
        results = []
        for m in ("r+b", "rb", "wb"):
            p = spawn.Process(target=w.stream_open_as_nobody, args=(name, m, q))
            p.start()
            results.append(q.get(timeout=30))
            join_all([p])
    assert results[0] == ("ok", True, False, b"readable")
    assert results[1] == ("ok", True, False, b"readable")
    assert results[2][:2] == ("error", "PermissionError")


# ---- no fd leaks ---------------------------------------------------------------------------


def test_open_and_close_10000_times_keeps_the_fd_count_flat(name: str) -> None:
    before = _fd_count()
    for i in range(5000):
        with open_stream(name, "w+b", owner=True) as f, open_stream(name, "rb") as g:
            if i % 1000 == 0:
                f.write(b"x")
                f.flush()
                assert g.read() == b"x"
    assert _fd_count() == before
    assert not _exists(name)


def test_failed_opens_leak_no_fd_and_no_name(name: str) -> None:
    before = _fd_count()
    for _ in range(200):
        with pytest.raises(FileNotFoundError):
            open_stream(name, "rb")
        with open_stream(name, "wb", owner=True):
            with pytest.raises(FileExistsError):
                open_stream(name, "wb", owner=True)
        with pytest.raises(LookupError):
            open_stream(name, "w", owner=True, encoding="no-such-codec")
        with pytest.raises(ValueError):
            open_stream(name, "w", owner=True, persistent=True, buffering=-5)
        assert not _exists(name)
    assert _fd_count() == before
    assert not [e for e in os.listdir("/dev/shm") if e.startswith(".shmipc-tmp-")]


def test_stream_info_of_a_missing_name_is_FileNotFoundError(name: str) -> None:
    with pytest.raises(FileNotFoundError):
        shmipc.stream_info(name)


def test_sigkilled_owner_leaves_no_temporary_files(name: str, spawn: Any) -> None:
    ready, done = spawn.Event(), spawn.Event()
    p = spawn.Process(target=w.stream_owner_then_wait, args=(name, ready, done))
    p.start()
    assert ready.wait(30)
    assert p.pid is not None
    os.kill(p.pid, signal.SIGKILL)
    join_all([p])
    shmipc.unlink(name)  # recovery by force
    assert not _exists(name)


def test_the_inventory_lists_streams_and_values_with_owner_liveness(name: str, spawn: Any) -> None:
    ready, done = spawn.Event(), spawn.Event()
    p = spawn.Process(target=w.stream_owner_then_wait, args=(name, ready, done))
    p.start()
    try:
        assert ready.wait(30)
        with shmipc.SharedValue.create(name + ".v", 64):
            objs = {o["name"]: o for o in shmipc._core.list_objects()}
            assert objs[name]["kind"] == "stream" and objs[name]["owner_alive"]
            assert objs[name + ".v"]["kind"] == "value" and objs[name + ".v"]["owner_alive"]
        p.kill()
        join_all([p])
        objs = {o["name"]: o for o in shmipc._core.list_objects()}
        assert objs[name]["stale"] and not objs[name]["owner_alive"]
        assert name + ".v" not in objs
    finally:
        # Never set() an mp.Event a killed process was waiting on: its Condition would wait
        # forever for the dead sleeper's acknowledgement.
        if p.is_alive():
            done.set()
        join_all([p])
        if _exists(name):
            shmipc.unlink(name)


def test_growing_truncate_reserves_the_pages_or_fails_with_enospc(name: str) -> None:
    import errno
    import mmap

    free = os.statvfs("/dev/shm").f_bavail * os.statvfs("/dev/shm").f_frsize
    with open_stream(name, "w+b", owner=True) as f:
        with pytest.raises(OSError) as ei:
            f.truncate(free + (1 << 30))  # more than /dev/shm can hold: now, not as SIGBUS
        assert ei.value.errno in (errno.ENOSPC, errno.EFBIG)
        assert os.fstat(f.fileno()).st_size == 0
        f.truncate(1 << 20)
        assert os.fstat(f.fileno()).st_size == 1 << 20
        with mmap.mmap(f.fileno(), 1 << 20) as m:  # every page is backed
            m[-1:] = b"x"
            assert m[(1 << 20) - 1] == ord("x")
        f.truncate(10)  # shrinking still works
        assert os.fstat(f.fileno()).st_size == 10
