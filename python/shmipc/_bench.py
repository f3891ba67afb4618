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


def main(quick: bool = True) -> int:
    ctx = mp.get_context("spawn")
    sizes = [1 << 10, 1 << 20, 64 << 20] if quick else [1 << 10, 1 << 20, 64 << 20, 256 << 20]
    reps = 3 if quick else 10
    print("shmipc quick benchmark (shmipc vs stdlib, same run; lower is better)\n")
    print(f"{'operation':36} {'shmipc':>11} {'stdlib':>11}  {'peer':14} ratio")
    rows = [(n, s, t, "mp.Queue") for n, s, t in bench_arrays(ctx, sizes, reps)]
    for name, s, t, peer in rows:
        print(f"{name:36} {_fmt(s)} {_fmt(t)}  {peer:14} {t / s:,.1f}x")
    return 0
