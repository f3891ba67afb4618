"""Stopped lock holders and exhausted heaps (issue 10 items 1 and 10): a SIGSTOPped holder
makes bounded waits time out, never hang; a full heap is back-pressure for allocate(timeout=)
and MemoryError without one; frames of a few MB stream through a small heap."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

import shmipc

import workers_hostile as W
from testutil import join_all

FRAME = 1080 * 1920 * 3


def _wait_flag(flag: Any, p: Any, what: str) -> None:
    deadline = time.monotonic() + 120
    while not flag.value:
        assert p.exitcode is None, f"{what} died: {p.exitcode}"
        assert time.monotonic() < deadline, f"{what} never got ready"
        time.sleep(0.01)


def _wait_stopped(pid: int) -> None:
    deadline = time.monotonic() + 60
    while True:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        if state == "T":
            return
        assert time.monotonic() < deadline, "the holder never stopped"
        time.sleep(0.01)


def test_a_stopped_heap_lock_holder_makes_bounded_waits_time_out(name: str, spawn: Any) -> None:
    with shmipc.Heap.create(name, 8 << 20) as heap:
        ch = heap.channel("c", capacity=4)
        ready = spawn.Value("b", 0)
        p = spawn.Process(target=W.hold_heap_lock_then_stop, args=(name, ready))
        p.start()
        try:
            _wait_flag(ready, p, "the holder")
            _wait_stopped(p.pid)
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                heap.allocate(1 << 20, timeout=0.5)
            assert time.monotonic() - t0 >= 0.45
            with pytest.raises(TimeoutError):
                ch.send(b"x" * 4096, timeout=0.5)  # not inline: needs a heap block
        finally:
            p.kill()
            p.join(30)
        # The holder is dead now: the next locker takes the lock over and all works again.
        blk = heap.allocate(1 << 20, timeout=10)
        blk.release()
        ch.send(b"after", timeout=10)
        rx = heap.channel("c")
        assert rx.recv_bytes(timeout=10) == b"after"
        ch.close()
        rx.close()


def test_allocate_without_timeout_is_memory_error_at_once_and_with_one_waits(
    name: str, spawn: Any
) -> None:
    with shmipc.Heap.create(name, 4 << 20, thread_cache=False) as heap:
        ready = spawn.Value("b", 0)
        p = spawn.Process(target=W.hold_memory, args=(name, 3 << 20, ready, 1.0))
        p.start()
        _wait_flag(ready, p, "the holder")
        with pytest.raises(MemoryError, match="largest free block"):
            heap.allocate(2 << 20)
        # The holder frees after ~1 s: a waiting allocate gets the memory then.
        blk = heap.allocate(2 << 20, timeout=60)
        assert blk.nbytes == 2 << 20
        blk.release()
        join_all([p], 60)
        assert p.exitcode == 0


def test_a_waiting_allocate_times_out_with_memory_error(name: str) -> None:
    with shmipc.Heap.create(name, 4 << 20, thread_cache=False) as heap:
        keep = heap.allocate(3 << 20)
        t0 = time.monotonic()
        with pytest.raises(MemoryError):
            heap.allocate(2 << 20, timeout=0.3)
        assert time.monotonic() - t0 >= 0.25
        keep.release()


def test_memory_of_a_killed_holder_ends_a_waiting_allocate(name: str, spawn: Any) -> None:
    with shmipc.Heap.create(name, 4 << 20, thread_cache=False) as heap:
        ready = spawn.Value("b", 0)
        p = spawn.Process(target=W.hold_memory_and_wait, args=(name, 3 << 20, ready))
        p.start()
        _wait_flag(ready, p, "the holder")
        os.kill(p.pid, signal.SIGKILL)
        blk = heap.allocate(2 << 20, timeout=60)  # reaped while waiting
        blk.release()
        p.join(30)


@pytest.mark.parametrize("heap_mib", [16, 128])
def test_1080p_frames_stream_through_a_small_heap_without_fragmentation_failures(
    name: str, spawn: Any, heap_mib: int
) -> None:
    n = 120
    with shmipc.Heap.create(name, heap_mib << 20) as heap:
        ch = heap.channel("frames", capacity=8)
        p = spawn.Process(target=W.stream_frames, args=(name, n, FRAME, 60.0))
        p.start()
        got = 0
        try:
            for i in range(n):
                blk = ch.recv(timeout=120)
                assert blk.nbytes == FRAME + (i % 7) * 4096
                assert blk.as_array()[0] == i % 256
                blk.release()
                got += 1
        finally:
            join_all([p], 120)
        assert got == n and p.exitcode == 0
        ch.close()
        assert heap.stats()["largest_free"] >= (heap_mib << 20) // 2


def test_ctrl_c_ends_a_waiting_allocate(name: str) -> None:
    import threading

    with shmipc.Heap.create(name, 4 << 20, thread_cache=False) as heap:
        keep = heap.allocate(3 << 20)
        timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
        timer.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                heap.allocate(2 << 20, timeout=None)
        finally:
            timer.cancel()
            keep.release()
