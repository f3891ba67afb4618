"""Processes for the hostile suite (spawned: importable, top-level)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import shmipc


def hold_heap_lock_then_stop(name: str, ready: Any) -> None:
    """Takes the heap lock, says so, and stops itself (SIGSTOP) holding it."""
    heap = shmipc.Heap.attach(name, thread_cache=False)
    heap._lock_for_crash_test()
    ready.value = 1
    os.kill(os.getpid(), signal.SIGSTOP)
    time.sleep(600)


def stream_frames(name: str, n: int, nbytes: int, timeout: float) -> None:
    """Allocates frames with back-pressure and sends them through the heap's channel."""
    heap = shmipc.Heap.attach(name)
    with heap.channel("frames", capacity=8) as ch:
        for i in range(n):
            blk = heap.allocate(nbytes + (i % 7) * 4096, timeout=timeout)
            blk.as_array()[:8] = i % 256
            ch.send(blk, timeout=60)


def hold_memory(name: str, nbytes: int, ready: Any, seconds: float) -> None:
    """Allocates nbytes, says so, frees them after `seconds`."""
    heap = shmipc.Heap.attach(name, thread_cache=False)
    blk = heap.allocate(nbytes)
    ready.value = 1
    time.sleep(seconds)
    blk.release()
    heap.close()


def hold_memory_and_wait(name: str, nbytes: int, ready: Any) -> None:
    heap = shmipc.Heap.attach(name, thread_cache=False)
    blk = heap.allocate(nbytes)
    blk._detach()
    ready.value = 1
    time.sleep(600)


def exit_with_a_daemon_thread_blocked(name: str, kind: str, ready: Any) -> None:
    """Creates a named heap (blocked in a channel recv) or queue (blocked in get) in a daemon
    thread, then returns: the interpreter exits with the thread still waiting."""
    import threading

    if kind == "heap":
        heap = shmipc.Heap.create(name, 1 << 20)
        ch = heap.channel("c")
        threading.Thread(target=lambda: ch.recv(), daemon=True).start()
    else:
        q = shmipc.MessageQueue.create(name)
        threading.Thread(target=lambda: q.get(), daemon=True).start()
    time.sleep(0.2)
    ready.value = 1
