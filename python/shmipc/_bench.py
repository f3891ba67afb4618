"""``python -m shmipc bench``: a quick benchmark of shmipc against the stdlib, in one run.

The full suite with plots lives in the source tree (benchmarks/run_all.py); this is the
installed, self-contained subset that users can run anywhere to see what shmipc buys on their
machine. Every section prints shmipc next to its stdlib peer and the ratio.
"""

from __future__ import annotations

import multiprocessing as mp
import socket
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from . import _buffer
from ._heap import Heap
from ._queue import MessageQueue
from ._value import SharedValue


def _median(fn: Callable[[], object], reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _fmt(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:8.1f} µs"
    if s < 1:
        return f"{s * 1e3:8.2f} ms"
    return f"{s:8.2f} s "


def _echo_arrays(sock: socket.socket) -> None:
    while True:
        try:
            arr = _buffer.recv_array(sock)
        except EOFError:
            return
        _buffer.send_array(sock, arr)
        del arr


def _echo_queue(qin: Any, qout: Any) -> None:
    while (x := qin.get()) is not None:
        qout.put(x)


def bench_arrays(ctx: Any, sizes: list[int], reps: int) -> list[tuple[str, float, float]]:
    """Array round trip to a child and back: shmipc send_array vs multiprocessing.Queue."""
    out = []
    a, b = socket.socketpair()
    p = ctx.Process(target=_echo_arrays, args=(b,), daemon=True)
    p.start()
    b.close()
    qin, qout = ctx.Queue(), ctx.Queue()
    q = ctx.Process(target=_echo_queue, args=(qin, qout), daemon=True)
    q.start()
    try:
        for size in sizes:
            buf = _buffer.Buffer(size)
            state = {"x": buf.as_array(np.uint8)}
            del buf

            def shm_once(state: dict[str, np.ndarray] = state) -> None:
                _buffer.send_array(a, state.pop("x"))
                state["x"] = _buffer.recv_array(a, timeout=60)

            t_shm = _median(shm_once, reps * 5)
            data = np.zeros(size, np.uint8)

            def q_once(data: np.ndarray = data) -> None:
                qin.put(data)
                qout.get(timeout=120)

            t_q = _median(q_once, reps)
            out.append(
                (
                    f"array round trip {size >> 20} MiB"
                    if size >= 1 << 20
                    else f"array round trip {size >> 10} KiB",
                    t_shm,
                    t_q,
                )
            )
    finally:
        a.close()
        qin.put(None)
        p.join(10)
        q.join(10)
    return out


def _ch_echo(heap: Heap, n: int) -> None:
    rx, tx = heap.channel("ping"), heap.channel("pong")
    for _ in range(n):
        tx.send(rx.recv_bytes(timeout=60))


def _pipe_echo(conn: Any, n: int) -> None:
    for _ in range(n):
        conn.send_bytes(conn.recv_bytes())


def bench_ping_pong(ctx: Any, n: int) -> list[tuple[str, float, float, str]]:
    """64 B round trip: shmipc channel (default spin) vs multiprocessing.Pipe."""
    msg = b"x" * 64
    heap = Heap.anonymous(8 << 20)
    ping, pong = heap.channel("ping"), heap.channel("pong")
    p = ctx.Process(target=_ch_echo, args=(heap, n + 100), daemon=True)
    p.start()
    for _ in range(100):
        ping.send(msg)
        pong.recv_bytes(timeout=60)
    t0 = time.perf_counter()
    for _ in range(n):
        ping.send(msg)
        pong.recv_bytes(timeout=60)
    t_ch = (time.perf_counter() - t0) / n
    p.join(30)
    heap.close()
    a, b = ctx.Pipe()
    q = ctx.Process(target=_pipe_echo, args=(b, n + 100), daemon=True)
    q.start()
    for _ in range(100):
        a.send_bytes(msg)
        a.recv_bytes()
    t0 = time.perf_counter()
    for _ in range(n):
        a.send_bytes(msg)
        a.recv_bytes()
    t_pipe = (time.perf_counter() - t0) / n
    q.join(30)
    return [("64 B round trip (channel)", t_ch, t_pipe, "mp.Pipe")]


def _mq_consume(name: str, n: int) -> None:
    q = MessageQueue.attach(name)
    for _ in range(n):
        q.get()
    q.close()


def _mpq_consume(q: Any, n: int) -> None:
    for _ in range(n):
        q.get()


def bench_queue(ctx: Any, n: int) -> list[tuple[str, float, float, str]]:
    """Small objects one way, 1 -> 1: MessageQueue vs multiprocessing.Queue (time per item)."""
    import os

    obj = (12345, "small", 3.5)
    q = MessageQueue.create(f"shmipc-bench-{os.getpid()}", maxsize=1024, max_message_size=256)
    p = ctx.Process(target=_mq_consume, args=(q.name, n + 1), daemon=True)
    p.start()
    q.put(obj)  # warm-up: time from the moment the consumer runs
    while not q.empty():
        time.sleep(0.001)
    t0 = time.perf_counter()
    for _ in range(n):
        q.put(obj)
    p.join(60)
    t_mq = (time.perf_counter() - t0) / n
    q.close()
    mq = ctx.Queue()
    p = ctx.Process(target=_mpq_consume, args=(mq, n + 1), daemon=True)
    p.start()
    mq.put(obj)
    while not mq.empty():
        time.sleep(0.001)
    time.sleep(0.05)
    t0 = time.perf_counter()
    for _ in range(n):
        mq.put(obj)
    p.join(60)
    t_q = (time.perf_counter() - t0) / n
    return [("small object one way (queue)", t_mq, t_q, "mp.Queue")]


def _value_pong(ping: str, pong: str, n: int) -> None:
    a, b = SharedValue.attach(ping), SharedValue.attach(pong)
    seen = a.version
    b.write(b"ready")  # the parent starts only once we watch: a ping before that would be lost
    for _ in range(n):
        seen = a.wait(timeout=60, since=seen)
        b.write(b"pong")


def _event_pong(e1: Any, e2: Any, n: int) -> None:
    for _ in range(n):
        e1.wait(60)
        e1.clear()
        e2.set()


def bench_notify(ctx: Any, n: int) -> list[tuple[str, float, float, str]]:
    """Change notification round trip: SharedValue.wait vs multiprocessing.Event."""
    import os

    tag = f"shmipc-bench-{os.getpid()}"
    ping = SharedValue.create(tag + "-ping", size=64)
    pong = SharedValue.create(tag + "-pong", size=64)
    p = ctx.Process(target=_value_pong, args=(ping.name, pong.name, n), daemon=True)
    p.start()
    seen = pong.wait(timeout=60, since=0)
    t0 = time.perf_counter()
    for _ in range(n):
        ping.write(b"ping")
        seen = pong.wait(timeout=60, since=seen)
    t_v = (time.perf_counter() - t0) / n
    p.join(30)
    ping.close()
    pong.close()
    e1, e2 = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_event_pong, args=(e1, e2, n), daemon=True)
    p.start()
    t0 = time.perf_counter()
    for _ in range(n):
        e1.set()
        e2.wait(60)
        e2.clear()
    t_e = (time.perf_counter() - t0) / n
    p.join(30)
    return [("notify round trip (SharedValue)", t_v, t_e, "mp.Event")]


def bench_dict(ctx: Any, n: int) -> list[tuple[str, float, float, str]]:
    """Shared dict set+get of a small value: heap.dict vs multiprocessing.Manager().dict()."""
    heap = Heap.anonymous(8 << 20)
    d = heap.dict("bench")
    t0 = time.perf_counter()
    for i in range(n):
        d["k"] = i
        _ = d["k"]
    t_d = (time.perf_counter() - t0) / n
    d.close()
    heap.close()
    with ctx.Manager() as m:
        md = m.dict()
        k = max(1, n // 20)
        t0 = time.perf_counter()
        for i in range(k):
            md["k"] = i
            _ = md["k"]
        t_m = (time.perf_counter() - t0) / k
    return [("dict set+get (heap.dict)", t_d, t_m, "Manager().dict")]


def main(quick: bool = True) -> int:
    ctx = mp.get_context("spawn")
    sizes = [1 << 10, 1 << 20, 64 << 20] if quick else [1 << 10, 1 << 20, 64 << 20, 256 << 20]
    reps = 3 if quick else 10
    print("shmipc quick benchmark (shmipc vs stdlib, same run; lower is better)\n")
    print(f"{'operation':36} {'shmipc':>11} {'stdlib':>11}  {'peer':14} ratio")
    scale = 1 if quick else 5
    rows = [(n, s, t, "mp.Queue") for n, s, t in bench_arrays(ctx, sizes, reps)]
    rows += bench_ping_pong(ctx, 2000 * scale)
    rows += bench_queue(ctx, 20000 * scale)
    rows += bench_notify(ctx, 500 * scale)
    rows += bench_dict(ctx, 20000 * scale)
    for name, s, t, peer in rows:
        print(f"{name:36} {_fmt(s)} {_fmt(t)}  {peer:14} {t / s:,.1f}x")
    return 0
