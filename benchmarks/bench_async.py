"""Awaiting shmipc from asyncio vs the blocking API, zmq.asyncio and run_in_executor.

One run, same machine, same moment:
  - 64 B round trip parent -> child -> parent with await on both sides (Channel.arecv/asend),
    the blocking API (Channel.recv/send), zmq.asyncio PAIR over ipc://, and asyncio +
    run_in_executor over a multiprocessing.Pipe (the workaround the issue describes);
  - throughput of 64 B messages from a blocking sender into an awaiting consumer;
  - event-loop lag (1 ms ticker) with 100 coroutines awaiting idle channels, vs the ticker alone.

Usage: python benchmarks/bench_async.py [--n 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
import shmipc  # noqa: E402

from _common import machine  # noqa: E402

MSG = b"x" * 64


# --- children (spawn) --------------------------------------------------------------------------


def echo_async(heap: shmipc.Heap, n: int) -> None:
    a, b = heap.channel("ping"), heap.channel("pong")

    async def main() -> None:
        for _ in range(n):
            blk = await a.arecv_bytes(timeout=60)
            await b.asend(blk, timeout=60)

    asyncio.run(main())


def echo_blocking(heap: shmipc.Heap, n: int, names: tuple[str, str] = ("bping", "bpong")) -> None:
    a, b = heap.channel(names[0]), heap.channel(names[1])
    for _ in range(n):
        b.send(a.recv_bytes(timeout=60), timeout=60)


def echo_zmq(addr: str, n: int) -> None:
    import zmq
    import zmq.asyncio

    async def main() -> None:
        zctx = zmq.asyncio.Context()
        s = zctx.socket(zmq.PAIR)
        s.connect(addr)
        for _ in range(n):
            await s.send(await s.recv())
        s.close(linger=1000)
        zctx.term()

    asyncio.run(main())


def echo_pipe(conn: object, n: int) -> None:
    for _ in range(n):
        conn.send_bytes(conn.recv_bytes())  # type: ignore[attr-defined]


def flood(heap: shmipc.Heap, n: int) -> None:
    ch = heap.channel("flood", capacity=1024)
    for _ in range(n):
        ch.send(MSG, timeout=60)
    ch.close()


# --- measurements ------------------------------------------------------------------------------


def per_trip(times: list[float]) -> float:
    return statistics.median(times)


async def rt_await(
    heap: shmipc.Heap, n: int, names: tuple[str, str] = ("ping", "pong")
) -> list[float]:
    a, b = heap.channel(names[0]), heap.channel(names[1])
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await a.asend(MSG, timeout=60)
        await b.arecv_bytes(timeout=60)
        out.append(time.perf_counter() - t0)
    return out


def rt_blocking(heap: shmipc.Heap, n: int) -> list[float]:
    a, b = heap.channel("bping"), heap.channel("bpong")
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        a.send(MSG, timeout=60)
        b.recv_bytes(timeout=60)
        out.append(time.perf_counter() - t0)
    return out


async def rt_zmq(sock: object, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await sock.send(MSG)  # type: ignore[attr-defined]
        await sock.recv()  # type: ignore[attr-defined]
        out.append(time.perf_counter() - t0)
    return out


async def rt_executor(conn: object, n: int) -> list[float]:
    loop = asyncio.get_running_loop()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.send_bytes(MSG)  # type: ignore[attr-defined]
        await loop.run_in_executor(None, conn.recv_bytes)  # type: ignore[attr-defined]
        out.append(time.perf_counter() - t0)
    return out


async def lag(heap: shmipc.Heap | None, seconds: float) -> list[float]:
    loop = asyncio.get_running_loop()
    waiters = []
    if heap is not None:
        chans = [heap.channel(f"idle{i}", capacity=2) for i in range(100)]
        waiters = [asyncio.create_task(ch.arecv(timeout=seconds + 30)) for ch in chans]
        await asyncio.sleep(0.05)
    lags = []
    end = loop.time() + seconds
    while loop.time() < end:
        t0 = loop.time()
        await asyncio.sleep(0.001)
        lags.append(loop.time() - t0 - 0.001)
    for t in waiters:
        t.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    return lags


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * p))]


def us(s: float) -> str:
    return f"{s * 1e6:.1f} µs"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--flood", type=int, default=200_000)
    args = ap.parse_args()
    n = args.n
    ctx = mp.get_context("spawn")
    name = f"bench-async-{os.getpid()}"
    heap = shmipc.Heap.create(name, size=64 << 20)
    rows: list[tuple[str, float]] = []
    try:
        # await on both sides
        p = ctx.Process(target=echo_async, args=(heap, n + 200))
        p.start()
        t = asyncio.run(rt_await(heap, n + 200))[200:]
        p.join(60)
        rows.append(("shmipc await (arecv/asend) both sides", per_trip(t)))

        p = ctx.Process(target=echo_blocking, args=(heap, n + 200, ("mping", "mpong")))
        p.start()
        t = asyncio.run(rt_await(heap, n + 200, ("mping", "mpong")))[200:]
        p.join(60)
        rows.append(("shmipc await in the parent, blocking echo in the child", per_trip(t)))

        p = ctx.Process(target=echo_blocking, args=(heap, n + 200))
        p.start()
        t = rt_blocking(heap, n + 200)[200:]
        p.join(60)
        rows.append(("shmipc blocking (recv/send, default spin)", per_trip(t)))

        try:
            import zmq
            import zmq.asyncio

            addr = f"ipc://{tempfile.mkdtemp()}/z"
            zctx = zmq.asyncio.Context()
            s = zctx.socket(zmq.PAIR)
            s.bind(addr)
            p = ctx.Process(target=echo_zmq, args=(addr, n + 200))
            p.start()
            t = asyncio.run(rt_zmq(s, n + 200))[200:]
            p.join(60)
            s.close(linger=0)
            zctx.term()
            rows.append(("zmq.asyncio PAIR ipc://", per_trip(t)))
        except ImportError:
            print("(pyzmq not installed: no zmq row)")

        here, there = mp.Pipe()
        p = ctx.Process(target=echo_pipe, args=(there, n + 200))
        p.start()
        t = asyncio.run(rt_executor(here, n + 200))[200:]
        p.join(60)
        rows.append(
            ("asyncio + run_in_executor in the parent, mp.Pipe, blocking echo", per_trip(t))
        )

        # throughput into an awaiting consumer
        rx = heap.channel("flood", capacity=1024)
        rx.poll(0)
        p = ctx.Process(target=flood, args=(heap, args.flood))
        p.start()

        async def consume() -> tuple[int, float]:
            k = 0
            t0 = None
            while True:
                try:
                    await rx.arecv_bytes(timeout=60)
                except EOFError:
                    break
                if t0 is None:
                    t0 = time.perf_counter()
                k += 1
            return k, time.perf_counter() - (t0 or time.perf_counter())

        got, dt = asyncio.run(consume())
        p.join(60)

        base = asyncio.run(lag(None, 2.0))
        loaded = asyncio.run(lag(heap, 2.0))
    finally:
        heap.close()

    load = os.getloadavg()
    print(f"\n64 B round trip parent -> child -> parent (median of {n}), {machine()}")
    print(f"reactor: {shmipc.reactor_info()['mode']}; load average {load[0]:.2f} {load[1]:.2f}\n")
    ours = rows[0][1]
    print("| how | round trip | vs await |")
    print("|---|---|---|")
    for label, v in rows:
        print(f"| {label} | {us(v)} | {v / ours:.2f}x |")
    print(
        f"\nthroughput, 64 B messages into `await ch.arecv_bytes()`: {got / dt:,.0f} msg/s "
        f"({got:,} messages)"
    )
    print("\nevent-loop lag of a 1 ms ticker (2 s each):\n")
    print("| | median | p99 | max |")
    print("|---|---|---|---|")
    for label, xs in (("ticker alone", base), ("100 coroutines awaiting", loaded)):
        print(f"| {label} | {us(statistics.median(xs))} | {us(pct(xs, 0.99))} | {us(max(xs))} |")


if __name__ == "__main__":
    main()
