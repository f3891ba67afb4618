"""SharedValue versus the stdlib, in one run, with ratios.

1. write + read of one value (64 B and 1 MiB; bytes and a float32 array) versus
   multiprocessing.shared_memory guarded by a multiprocessing.Lock (length prefix + copy in,
   copy out): the equivalent a Python user writes today.
2. Change-notification latency: a writer changes the value and a waiting reader in another
   process wakes up; measured as a ping-pong between two processes (half the round trip),
   versus multiprocessing.Event and multiprocessing.Condition (+ a shared counter).

Usage: python benchmarks/bench_values.py [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import struct
import time
from collections.abc import Callable
from multiprocessing import shared_memory
from typing import Any

import numpy as np

import shmipc


def _name(tag: str) -> str:
    return f"shmipc-bench-{tag}-{os.getpid()}-{time.monotonic_ns() % 10**9}"


def _best_per_op(fn: Callable[[int], None], n: int, repeats: int) -> float:
    """Best of `repeats` runs of fn(n), in microseconds per iteration."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(n)
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
    return best


# ---- 1. write + read -----------------------------------------------------------------------


def bench_write_read(value: Any, n: int, repeats: int) -> tuple[float, float]:
    nbytes = value.nbytes if isinstance(value, np.ndarray) else len(value)
    is_array = isinstance(value, np.ndarray)

    name = _name("wr")
    with shmipc.SharedValue.create(name, nbytes) as w, shmipc.SharedValue.attach(name) as r:

        def ours(k: int) -> None:
            write, read = w.write, r.read
            for _ in range(k):
                write(value)
                read()

        ours(10)
        t_ours = _best_per_op(ours, n, repeats)
        got = r.read()
        assert (got == value).all() if is_array else got == value

    lock = mp.Lock()
    shm = shared_memory.SharedMemory(create=True, size=nbytes + 8)
    try:
        buf = shm.buf
        dtype = value.dtype if is_array else None
        shape = value.shape if is_array else None

        def stdlib(k: int) -> None:
            # The fastest honest equivalent: one copy in, one private copy out, under a lock.
            for _ in range(k):
                data = memoryview(value).cast("B") if is_array else value
                with lock:  # write
                    buf[:8] = struct.pack("<Q", len(data))
                    buf[8 : 8 + len(data)] = data
                with lock:  # read
                    (length,) = struct.unpack("<Q", buf[:8])
                    if is_array:
                        view = np.frombuffer(buf, dtype, length // dtype.itemsize, 8)
                        view.reshape(shape).copy()
                        del view
                    else:
                        bytes(buf[8 : 8 + length])

        stdlib(10)
        t_std = _best_per_op(stdlib, n, repeats)
    finally:
        shm.close()
        shm.unlink()
    return t_ours, t_std


# ---- 2. notification latency ---------------------------------------------------------------


def _pong_value(ping: str, pong: str, n: int, ready: Any) -> None:
    with shmipc.SharedValue.attach(ping) as a, shmipc.SharedValue.attach(pong) as b:
        ready.set()
        seen = 0
        for _ in range(n):
            seen = a.wait(timeout=30, since=seen)
            b.write(b"p")


def bench_latency_value(n: int) -> float:
    ping, pong = _name("ping"), _name("pong")
    ctx = mp.get_context("spawn")
    with shmipc.SharedValue.create(ping, 64) as a, shmipc.SharedValue.create(pong, 64) as b:
        ready = ctx.Event()
        p = ctx.Process(target=_pong_value, args=(ping, pong, n, ready))
        p.start()
        ready.wait(30)
        seen = 0
        t0 = time.perf_counter()
        for _ in range(n):
            a.write(b"p")
            seen = b.wait(timeout=30, since=seen)
        dt = time.perf_counter() - t0
        p.join(30)
    return dt / n / 2 * 1e6


def _pong_event(e1: Any, e2: Any, n: int) -> None:
    for _ in range(n):
        e1.wait(30)
        e1.clear()
        e2.set()


def bench_latency_event(n: int) -> float:
    ctx = mp.get_context("spawn")
    e1, e2 = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_pong_event, args=(e1, e2, n))
    p.start()
    # warm-up round trip so process start-up is not measured
    e1.set()
    e2.wait(30)
    e2.clear()
    t0 = time.perf_counter()
    for _ in range(n - 1):
        e1.set()
        e2.wait(30)
        e2.clear()
    dt = time.perf_counter() - t0
    p.join(30)
    return dt / (n - 1) / 2 * 1e6


def _pong_condition(cond: Any, counter: Any, n: int) -> None:
    with cond:
        for i in range(n):
            cond.wait_for(lambda i=i: counter.value == 2 * i + 1, 30)
            counter.value += 1
            cond.notify_all()


def bench_latency_condition(n: int) -> float:
    ctx = mp.get_context("spawn")
    cond = ctx.Condition()
    counter = ctx.Value("q", 0, lock=False)
    p = ctx.Process(target=_pong_condition, args=(cond, counter, n))
    p.start()
    time.sleep(0.5)  # let the child start and block on the condition
    t0 = time.perf_counter()
    with cond:
        for i in range(n):
            counter.value += 1
            cond.notify_all()
            cond.wait_for(lambda i=i: counter.value == 2 * i + 2, 30)
    dt = time.perf_counter() - t0
    p.join(30)
    return dt / n / 2 * 1e6


# ---- main ----------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer iterations (< 30 s)")
    args = ap.parse_args()
    small_n, big_n, lat_n, repeats = (
        (20000, 200, 1000, 3) if args.quick else (100000, 1000, 5000, 5)
    )

    print(f"shmipc {shmipc.__version__}, numpy {np.__version__}, {os.cpu_count()} CPUs")
    print()
    print("1. write + read of one value (best of runs, µs per write+read pair; lower is better)")
    print(f"{'value':<28}{'SharedValue':>14}{'shm+Lock':>14}{'speed-up':>11}")
    cases = [
        ("64 B bytes", os.urandom(64), small_n),
        ("64 B float32[16]", np.arange(16, dtype=np.float32), small_n),
        ("1 MiB bytes", os.urandom(1 << 20), big_n),
        ("1 MiB float32[512,512]", np.ones((512, 512), dtype=np.float32), big_n),
    ]
    for label, value, n in cases:
        ours, std = bench_write_read(value, n, repeats)
        print(f"{label:<28}{ours:>14.2f}{std:>14.2f}{std / ours:>10.2f}x")

    print()
    print("2. change notification, writer -> waiting reader in another process")
    print("   (one-way = half a ping-pong round trip, median of 3 runs, µs; lower is better)")
    runs = 3
    ours = statistics.median(bench_latency_value(lat_n) for _ in range(runs))
    ev = statistics.median(bench_latency_event(lat_n) for _ in range(runs))
    co = statistics.median(bench_latency_condition(lat_n) for _ in range(runs))
    print(f"{'mechanism':<34}{'one-way µs':>12}{'SharedValue speed-up':>22}")
    print(f"{'SharedValue write -> wait':<34}{ours:>12.2f}{1.0:>21.2f}x")
    print(f"{'multiprocessing.Event':<34}{ev:>12.2f}{ev / ours:>21.2f}x")
    print(f"{'multiprocessing.Condition':<34}{co:>12.2f}{co / ours:>21.2f}x")


if __name__ == "__main__":
    main()
