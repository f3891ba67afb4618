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


def honest_user(kind: str, name: str, seconds: float, out: Any) -> None:
    """Uses a named object with bounded waits while another process scribbles over its memory.
    Every Python exception is an acceptable answer (counted); only a signal (segfault, SIGBUS)
    or a hang fails the test."""
    import collections
    import queue as queue_mod

    seen: collections.Counter[str] = collections.Counter()
    end = time.monotonic() + seconds
    obj: Any = None
    ops = 0
    while time.monotonic() < end:
        try:
            if obj is None:
                if kind == "value":
                    obj = shmipc.SharedValue.attach(name)
                elif kind == "queue":
                    obj = shmipc.MessageQueue.attach(name)
                else:
                    obj = shmipc.Heap.attach(name)
            if kind == "value":
                obj.write(b"honest" * (ops % 50), timeout=0.5)
                obj.read()
                obj.wait(timeout=0.001)
            elif kind == "queue":
                try:
                    obj.put_bytes(b"m" * (ops % 60), timeout=0.2)
                    obj.get_bytes(timeout=0.2)
                except (queue_mod.Full, queue_mod.Empty):
                    seen["full/empty"] += 1
                obj.qsize()
            else:
                blk = obj.allocate(1 + (ops * 977) % 20000, timeout=0.5)
                blk.as_array()[:1] = 1
                blk.release()
                ch = obj.channel("c", capacity=16)
                ch.send(b"s" * (ops % 300), timeout=0.2)
                rx = obj.channel("c", capacity=16)
                rx.recv_bytes(timeout=0.2)
                ch.close()
                rx.close()
                d = obj.dict("d", timeout=0.5)
                d[str(ops % 7)] = ops
                d.get("1")
                obj.stats()
        except Exception as e:  # noqa: BLE001 -- any clear exception is an answer
            seen[type(e).__name__] += 1
            if obj is not None and seen[type(e).__name__] % 5 == 0:
                try:
                    obj.close()
                except Exception:  # noqa: BLE001
                    pass
                obj = None
        ops += 1
    out.put(dict(seen, ops=ops))


def inside_memory_cgroup(procs_file: str, name: str, out: Any) -> None:
    """Moves itself into a memory cgroup (after its imports) and asks for more shared memory
    than the cgroup allows, three ways; reports what each did."""
    with open(procs_file, "w") as f:
        f.write(str(os.getpid()))
    results = []
    for what, make in (
        ("Buffer", lambda: shmipc.Buffer(256 << 20)),
        ("Heap.anonymous", lambda: shmipc.Heap.anonymous(256 << 20)),
        ("Heap.create", lambda: shmipc.Heap.create(name, 256 << 20)),
    ):
        try:
            obj = make()
            results.append((what, "created"))
            obj.close()
        except MemoryError as e:
            results.append((what, "MemoryError", str(e)))
    # Something that fits still works.
    small = shmipc.Buffer(4 << 20)
    small.close()
    out.put(results)
