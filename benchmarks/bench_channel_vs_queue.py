"""Single-call channel send/recv_bytes vs MessageQueue put_bytes/get_bytes, in the same run.

64 B messages, one way, child -> parent (spawn), the clock started at the first message; then
the same pair of calls in one process (no waiting: the per-call cost). Interleaved rounds.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))

import shmipc  # noqa: E402

from _common import machine, table  # noqa: E402

CTX = mp.get_context("spawn")
MSG = b"x" * 64


def channel_sender(heap: shmipc.Heap, n: int) -> None:
    tx = heap.channel("s")
    tx.spin = 1e-3
    send = tx.send
    for _ in range(n):
        send(MSG)
    tx.close()


def queue_sender(name: str, n: int, start: Any) -> None:
    q = shmipc.MessageQueue.attach(name)
    start.wait()
    put = q.put_bytes
    for _ in range(n):
        put(MSG)
    put(b"")


def channel_rate(n: int) -> float:
    with shmipc.Heap.anonymous(64 << 20) as heap:
        rx = heap.channel("s", capacity=4096)
        rx.spin = 1e-3
        p = CTX.Process(target=channel_sender, args=(heap, n))
        p.start()
        recv = rx.recv_bytes
        recv(timeout=60)
        t0 = time.perf_counter()
        for _ in range(n - 1):
            recv(timeout=60)
        dt = time.perf_counter() - t0
        p.join(60)
        rx.close()
        return (n - 1) / dt


def queue_rate(n: int) -> float:
    name = f"bench-cvq-{os.getpid()}-{time.monotonic_ns()}"
    q = shmipc.MessageQueue.create(name, maxsize=1024, max_message_size=256)
    start = CTX.Event()
    p = CTX.Process(target=queue_sender, args=(name, n, start))
    p.start()
    time.sleep(1.0)  # let the child import and wait at the start
    t0 = time.perf_counter()
    start.set()
    get = q.get_bytes
    got = 0
    while get(timeout=60):
        got += 1
    dt = time.perf_counter() - t0
    p.join(60)
    q.close()
    return got / dt


def in_process(n: int) -> tuple[float, float]:
    with shmipc.Heap.anonymous(64 << 20) as heap:
        tx, rx = heap.channel("a", capacity=4096), heap.channel("a")
        send, recv = tx.send, rx.recv_bytes
        t0 = time.perf_counter()
        for _ in range(n // 100):
            for _ in range(100):
                send(MSG)
            for _ in range(100):
                recv()
        ch = (time.perf_counter() - t0) / n
        tx.close()
    q = shmipc.MessageQueue.create(f"bench-cvq-{os.getpid()}", maxsize=1024, max_message_size=256)
    put, get = q.put_bytes, q.get_bytes
    t0 = time.perf_counter()
    for _ in range(n // 100):
        for _ in range(100):
            put(MSG)
        for _ in range(100):
            get()
    qu = (time.perf_counter() - t0) / n
    q.close()
    return ch, qu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer messages")
    args = ap.parse_args()
    n = 100_000 if args.quick else 400_000
    print(f"Machine: {machine()}, load average {os.getloadavg()[0]:.1f}\n")
    rows = []
    for r in range(3):
        c, q = channel_rate(n), queue_rate(n)
        ci, qi = in_process(n // 2)
        rows.append(
            [
                str(r + 1),
                f"{c / 1e6:.2f} M/s",
                f"{q / 1e6:.2f} M/s",
                f"{c / q:.1f}x",
                f"{ci * 1e9:.0f} ns",
                f"{qi * 1e9:.0f} ns",
            ]
        )
    print("## 64 B, single calls: channel send/recv_bytes vs MessageQueue put_bytes/get_bytes\n")
    print(
        table(
            [
                "round",
                "channel, 2 processes",
                "queue, 2 processes",
                "channel/queue",
                "channel send+recv, 1 process",
                "queue put+get, 1 process",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
