"""Small-object put/get throughput between processes: shmipc.MessageQueue versus
multiprocessing.Queue and faster-fifo (if installed), 1 -> 1 and 4 -> 4.

    python benchmarks/bench_queue.py [--quick]

Every queue gets the same workload in the same run: P producer processes (spawn) each put
N/P small Python objects, C consumer processes get them; the clock runs from a common start
signal until the last consumer has everything. Printed: messages per second and the ratio to
multiprocessing.Queue.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import sys
import time
import uuid
from typing import Any

import shmipc

try:
    import faster_fifo
except ImportError:  # optional peer
    faster_fifo = None

ITEM = (12345, "small", 3.5)  # a small object: ~30 bytes pickled


def _put(kind: str, q: Any, obj: Any) -> None:
    if kind == "faster-fifo":
        while True:
            try:
                q.put(obj, timeout=60)
                return
            except Exception:  # faster_fifo.Full
                continue
    q.put(obj)


def producer(kind: str, q: Any, n: int, n_sentinels: int, start: Any) -> None:
    if kind.startswith("shmipc"):
        q = shmipc.MessageQueue.attach(q)
    start.wait()
    if kind == "shmipc bytes":
        payload = b"x" * 30
        put = q.put_bytes
        for _ in range(n):
            put(payload)
        for _ in range(n_sentinels):
            put(b"")
        return
    if kind == "faster-fifo":
        for _ in range(n):
            _put(kind, q, ITEM)
        for _ in range(n_sentinels):
            _put(kind, q, None)
        return
    put = q.put
    for _ in range(n):
        put(ITEM)
    for _ in range(n_sentinels):
        put(None)


def consumer(kind: str, q: Any, n_sentinels: int, start: Any, done: Any) -> None:
    if kind.startswith("shmipc"):
        q = shmipc.MessageQueue.attach(q)
    start.wait()
    got = 0
    seen = 0
    if kind == "shmipc bytes":
        get = q.get_bytes
        while seen < n_sentinels:
            if get():
                got += 1
            else:
                seen += 1
    elif kind == "faster-fifo":
        while seen < n_sentinels:
            try:
                item = q.get(timeout=60)
            except Exception:  # faster_fifo.Empty
                continue
            if item is None:
                seen += 1
            else:
                got += 1
    else:
        get = q.get
        while seen < n_sentinels:
            if get() is None:
                seen += 1
            else:
                got += 1
    done.put(got)


def run(kind: str, n: int, n_prod: int, n_cons: int) -> float:
    ctx = mp.get_context("spawn")
    owner: Any = None
    if kind.startswith("shmipc"):
        name = f"bench-queue-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        owner = shmipc.MessageQueue.create(name, maxsize=1024, max_message_size=256)
        handle: Any = name
    elif kind == "mp.Queue":
        handle = ctx.Queue(1024)
    else:
        handle = faster_fifo.Queue(max_size_bytes=1024 * 256)
    start = ctx.Event()
    done = ctx.Queue()
    per = n // n_prod
    prods = [
        ctx.Process(target=producer, args=(kind, handle, per, n_cons, start)) for _ in range(n_prod)
    ]
    cons = [
        ctx.Process(target=consumer, args=(kind, handle, n_prod, start, done))
        for _ in range(n_cons)
    ]
    for p in prods + cons:
        p.start()
    time.sleep(1.0 + 0.3 * (n_prod + n_cons))  # let every child import and wait at the start
    t0 = time.perf_counter()
    start.set()
    total = sum(done.get(timeout=600) for _ in cons)
    elapsed = time.perf_counter() - t0
    for p in prods + cons:
        p.join(60)
    if owner is not None:
        owner.close()
    assert total == per * n_prod, (kind, total)
    return total / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer messages (under ~30 s)")
    args = ap.parse_args()
    n = 40_000 if args.quick else 400_000
    kinds = ["mp.Queue", "shmipc", "shmipc bytes"]
    if faster_fifo is not None:
        kinds.insert(1, "faster-fifo")
    print(
        f"# bench_queue: {n} small objects {ITEM!r} per run, one run each; "
        f"{platform.machine()} {os.cpu_count()} cpus, Linux {platform.release()}, "
        f"Python {sys.version.split()[0]}"
    )
    print(f"{'setup':8} {'queue':14} {'msgs/s':>12} {'vs mp.Queue':>12}")
    results: dict[tuple[str, str], float] = {}
    for n_prod, n_cons in ((1, 1), (4, 4)):
        setup = f"{n_prod}->{n_cons}"
        base = None
        for kind in kinds:
            rate = run(kind, n, n_prod, n_cons)
            results[(setup, kind)] = rate
            if kind == "mp.Queue":
                base = rate
            ratio = f"{rate / base:.2f}x" if base else "-"
            print(f"{setup:8} {kind:14} {rate:12,.0f} {ratio:>12}", flush=True)


if __name__ == "__main__":
    main()
