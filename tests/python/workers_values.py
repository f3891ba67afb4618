"""Process bodies for test_stream.py and test_value.py (importable, for the spawn context)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import numpy as np

import shmipc

NOBODY = 65534


def drop_privileges() -> None:
    """Become 'nobody' (tests run as root, which ignores permission bits)."""
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


# ---- streams -------------------------------------------------------------------------------


def stream_guest_echo(name: str, q: Any) -> None:
    """Reads the stream as a guest, appends a line, reports what it read."""
    with shmipc.open_stream(name, "rb") as f:
        data = f.read()
    with shmipc.open_stream(name, "ab") as f:
        f.write(b"child was here\n")
    q.put(data)


def stream_owner_then_wait(name: str, ready: Any, done: Any, persistent: bool = False) -> None:
    """Creates the stream, writes to it, signals ready and stays alive until done (or killed)."""
    f = shmipc.open_stream(name, "w+b", owner=True, persistent=persistent)
    f.write(b"from the first owner")
    f.flush()
    ready.set()
    done.wait(60)
    f.close()


def stream_open_as_nobody(name: str, io_mode: str, q: Any) -> None:
    drop_privileges()
    try:
        # The stream is root's: another user trusts it explicitly (API.md §7).
        with shmipc.open_stream(name, io_mode, trust_owner=0) as f:
            q.put(("ok", f.readable(), f.writable(), f.read()))
    except OSError as e:
        q.put(("error", type(e).__name__, e.errno))


# ---- values --------------------------------------------------------------------------------


def value_read_and_reply(name: str, reply: str, q: Any) -> None:
    """Attaches, reports the value it reads, then writes `reply`."""
    with shmipc.SharedValue.attach(name) as v:
        got = v.read()
        q.put(
            (v.version, got if not isinstance(got, np.ndarray) else (got.dtype.str, got.tolist()))
        )
        v.write(reply)


def value_wait_then_report(name: str, ready: Any, q: Any, timeout: float) -> None:
    """Waits for the next change and reports (version, value, seconds waited)."""
    with shmipc.SharedValue.attach(name) as v:
        ready.set()
        t0 = time.monotonic()
        try:
            version = v.wait(timeout=timeout)
        except TimeoutError:
            q.put(("timeout", None, time.monotonic() - t0))
            return
        q.put((version, v.read(), time.monotonic() - t0))


def value_write_sequence(name: str, values: list[Any], delay: float) -> None:
    with shmipc.SharedValue.attach(name) as v:
        for x in values:
            time.sleep(delay)
            v.write(x)


def value_hammer_writer(name: str, writer_id: int, seconds: float, q: Any) -> None:
    """Writes constant-valued arrays whose length and fill both derive from a counter."""
    rng = np.random.default_rng(writer_id)
    n = 0
    with shmipc.SharedValue.attach(name) as v:
        end = time.monotonic() + seconds
        cap = v.size // 8
        while time.monotonic() < end:
            length = int(rng.integers(1, cap + 1))
            fill = float(writer_id * 1_000_000_000 + length)
            v.write(np.full(length, fill, dtype=np.float64))
            n += 1
    q.put(("writer", writer_id, n))


def value_hammer_reader(name: str, reader_id: int, seconds: float, q: Any) -> None:
    """Reads as fast as it can; every array must be uniform and match its own length."""
    torn = 0
    reads = 0
    versions_ok = True
    last = 0
    with shmipc.SharedValue.attach(name) as v:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            version, arr = v.read_versioned()
            if version < last:
                versions_ok = False
            last = version
            if arr is None:
                continue
            assert isinstance(arr, np.ndarray)
            reads += 1
            first = arr[0]
            if not (arr == first).all() or int(first) % 1_000_000_000 != arr.size:
                torn += 1
    q.put(("reader", reader_id, reads, torn, versions_ok))


def value_write_and_hang(name: str, good: bytes, bad_fill: int, nbytes: int) -> None:
    """Writes `good`, then starts a bad write and hangs halfway through it (to be killed)."""
    v = shmipc.SharedValue.attach(name)
    v.write(good)
    data = np.full(nbytes, bad_fill, dtype=np.uint8)
    shmipc._core._arm_crash_point("value.write.half", 1, stall=True)
    v.write(data.tobytes())  # stalls halfway, holding the writer lock


def value_write_forever(name: str, nbytes: int, started: Any) -> None:
    """Writes large constant arrays (a different constant each time) until killed."""
    with shmipc.SharedValue.attach(name) as v:
        i = 0
        started.set()
        while True:
            i = (i + 1) % 251
            v.write(np.full(nbytes, i, dtype=np.uint8))


def value_attach_as_nobody(name: str, q: Any) -> None:
    drop_privileges()
    with shmipc.SharedValue.attach(name, trust_owner=0) as v:  # root's value, trusted
        result: list[Any] = [v.readonly, v.read()]
        try:
            v.write(b"nope")
            result.append("wrote")
        except PermissionError:
            result.append("PermissionError")
    q.put(result)


def value_create_and_die(name: str, ready: Any) -> None:
    v = shmipc.SharedValue.create(name, 64)
    v.write(b"orphan")
    ready.set()
    os.kill(os.getpid(), signal.SIGKILL)


def value_wait_forever(name: str, ready: Any, q: Any) -> None:
    """Blocks in wait() with no timeout; reports the KeyboardInterrupt that SIGINT causes."""
    with shmipc.SharedValue.attach(name) as v:
        ready.set()
        t0 = time.monotonic()
        try:
            v.wait()
            q.put(("returned", time.monotonic() - t0))
        except KeyboardInterrupt:
            q.put(("KeyboardInterrupt", time.monotonic() - t0))


def value_on_change_collect(name: str, ready: Any, q: Any, expect: int, timeout: float) -> None:
    """Subscribes and reports values until it has seen `expect` as the last value."""
    import queue as _queue

    got: _queue.Queue[Any] = _queue.Queue()
    with shmipc.SharedValue.attach(name) as v:
        sub = v.on_change(got.put)
        ready.set()
        seen = []
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                x = got.get(timeout=0.1)
            except _queue.Empty:
                continue
            seen.append(x)
            if x == expect:
                break
        sub.stop()
        q.put((seen, sub.running))


def close_inherited(obj: Any, q: Any) -> None:
    """Closes an object inherited through fork() (it must not remove the parent's name)."""
    obj.close()
    q.put("closed")
