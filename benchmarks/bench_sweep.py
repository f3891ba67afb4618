"""Latency and throughput against message size: shmipc versus each peer, for the plots.

For every transport and size: the median round trip of one message (parent -> child ->
parent), and the one-way streaming throughput (the parent sends N messages, the child
receives them all and acknowledges). Writes JSON for run_all.py's plots and prints tables.

Transports:
  shmipc channel   SPSC channel in a shared heap; a Block moves by offset (zero copy)
  shmipc fd        send_array/recv_array of a Buffer-backed array (memfd by fd, zero copy)
  shmipc queue     MessageQueue.put_bytes/get_bytes (one copy in, one out; sizes <= 4 MiB)
  mp.Pipe          Connection.send_bytes/recv_bytes
  mp.Queue         multiprocessing.Queue of bytes
  faster-fifo      faster_fifo.Queue of bytes (when installed)

    python benchmarks/bench_sweep.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import shmipc  # noqa: E402

from _common import fmt_ratio, fmt_size, fmt_time, machine, median_time, table  # noqa: E402

QUEUE_MAX_MESSAGE = 4 << 20


# ------------------------------------------------------------------ children (spawn targets)
def _control(m: Any) -> int:
    """A 9-byte control message b"S" + count announces a stream of `count` messages."""
    if memoryview(m).nbytes != 9:  # never copy a payload just to look at it
        return -1
    b = bytes(m)
    return int.from_bytes(b[1:], "little") if b[:1] == b"S" else -1


def _ctl(n: int) -> bytes:
    return b"S" + n.to_bytes(8, "little")


def child_channel(heap: Any) -> None:
    down, up = heap.channel("down"), heap.channel("up")
    while True:
        try:
            blk = down.recv(timeout=120)
        except EOFError:
            return
        if (n := _control(blk)) >= 0:
            blk.release()
            for _ in range(n):
                down.recv(timeout=120).release()
            up.send(b"k")
            continue
        up.send(blk)


def child_fd(sock: socket.socket) -> None:
    while True:
        try:
            arr = shmipc.recv_array(sock)
        except EOFError:
            return
        if (n := _control(arr)) >= 0:
            for _ in range(n):
                del arr
                arr = shmipc.recv_array(sock, timeout=120)
            sock.sendall(b"k")
            continue
        shmipc.send_array(sock, arr)
        del arr


def child_queue(q_down: Any, q_up: Any) -> None:
    while (m := q_down.get_bytes(timeout=120)) != b"stop":
        if (n := _control(m)) >= 0:
            for _ in range(n):
                q_down.get_bytes(timeout=120)
            q_up.put_bytes(b"k")
            continue
        q_up.put_bytes(m)


def child_pipe(conn: Any) -> None:
    while (m := conn.recv_bytes()) != b"stop":
        if (n := _control(m)) >= 0:
            for _ in range(n):
                conn.recv_bytes()
            conn.send_bytes(b"k")
            continue
        conn.send_bytes(m)


def child_mpq(q_down: Any, q_up: Any) -> None:
    while (m := q_down.get(timeout=120)) != b"stop":
        if (n := _control(m)) >= 0:
            for _ in range(n):
                q_down.get(timeout=120)
            q_up.put(b"k")
            continue
        q_up.put(m)


# ------------------------------------------------------------------ drivers
class Transport:
    name = ""

    def start(self, ctx: Any, max_size: int) -> None: ...
    def round_trip(self, size: int) -> None: ...
    def stream(self, size: int, n: int) -> None: ...
    def stop(self) -> None: ...
    def supports(self, size: int) -> bool:
        return True


class ChannelT(Transport):
    name = "shmipc channel"

    def start(self, ctx: Any, max_size: int) -> None:
        self.heap = shmipc.Heap.anonymous(max(4 * max_size, 64 << 20) + (64 << 20))
        self.down, self.up = self.heap.channel("down"), self.heap.channel("up")
        self.p = ctx.Process(target=child_channel, args=(self.heap,))
        self.p.start()
        self.blocks: dict[int, Any] = {}

    def round_trip(self, size: int) -> None:
        blk = self.blocks.pop(size, None) or self.heap.allocate(size)
        self.down.send(blk)
        self.blocks[size] = self.up.recv(timeout=120)

    def stream(self, size: int, n: int) -> None:
        self.down.send(_ctl(n))
        payload = self.blocks.get(size) or self.heap.allocate(size)
        self.blocks[size] = payload
        mv = memoryview(payload)
        for _ in range(n):
            self.down.send(mv)  # one copy into the heap per message
        self.up.recv(timeout=120).release()

    def stop(self) -> None:
        self.down.close()
        self.p.join(30)
        self.blocks.clear()


class FdT(Transport):
    name = "shmipc fd"

    def start(self, ctx: Any, max_size: int) -> None:
        self.a, b = socket.socketpair()
        self.p = ctx.Process(target=child_fd, args=(b,))
        self.p.start()
        b.close()
        self.arrays: dict[int, np.ndarray] = {}

    def round_trip(self, size: int) -> None:
        arr = self.arrays.pop(size, None)
        if arr is None:
            arr = shmipc.Buffer(size).as_array(np.uint8)
        shmipc.send_array(self.a, arr)
        del arr
        self.arrays[size] = shmipc.recv_array(self.a, timeout=120)

    def stream(self, size: int, n: int) -> None:
        shmipc.send_array(self.a, np.frombuffer(_ctl(n), np.uint8))
        for _ in range(n):
            arr = shmipc.Buffer(size, _zero=False).as_array(np.uint8)
            shmipc.send_array(self.a, arr)
            del arr
        assert self.a.recv(1) == b"k"

    def stop(self) -> None:
        self.a.close()
        self.p.join(30)


class QueueT(Transport):
    name = "shmipc queue"

    def supports(self, size: int) -> bool:
        return size <= QUEUE_MAX_MESSAGE

    def start(self, ctx: Any, max_size: int) -> None:
        tag = f"bench-sweep-{os.getpid()}"
        m = min(max_size, QUEUE_MAX_MESSAGE)
        self.qd = shmipc.MessageQueue.create(tag + "-d", maxsize=16, max_message_size=m)
        self.qu = shmipc.MessageQueue.create(tag + "-u", maxsize=16, max_message_size=m)
        self.p = ctx.Process(target=child_queue, args=(self.qd, self.qu))
        self.p.start()

    def round_trip(self, size: int) -> None:
        self.qd.put_bytes(bytes(size) if size > 1 else b"xx")
        self.qu.get_bytes(timeout=120)

    def stream(self, size: int, n: int) -> None:
        payload = bytes(size)
        self.qd.put_bytes(_ctl(n))
        for _ in range(n):
            self.qd.put_bytes(payload)
        self.qu.get_bytes(timeout=120)

    def stop(self) -> None:
        self.qd.put_bytes(b"stop")
        self.p.join(30)
        self.qd.close()
        self.qu.close()


class PipeT(Transport):
    name = "mp.Pipe"

    def start(self, ctx: Any, max_size: int) -> None:
        self.c, child = ctx.Pipe()
        self.p = ctx.Process(target=child_pipe, args=(child,))
        self.p.start()

    def round_trip(self, size: int) -> None:
        self.c.send_bytes(bytes(size) if size > 1 else b"xx")
        self.c.recv_bytes()

    def stream(self, size: int, n: int) -> None:
        payload = bytes(size)
        self.c.send_bytes(_ctl(n))
        for _ in range(n):
            self.c.send_bytes(payload)
        self.c.recv_bytes()

    def stop(self) -> None:
        self.c.send_bytes(b"stop")
        self.p.join(30)


class MpQueueT(Transport):
    name = "mp.Queue"

    def make_queue(self, ctx: Any, max_size: int) -> Any:
        return ctx.Queue()

    def start(self, ctx: Any, max_size: int) -> None:
        self.qd, self.qu = self.make_queue(ctx, max_size), self.make_queue(ctx, max_size)
        self.p = ctx.Process(target=child_mpq, args=(self.qd, self.qu))
        self.p.start()

    def round_trip(self, size: int) -> None:
        self.qd.put(bytes(size) if size > 1 else b"xx")
        self.qu.get(timeout=120)

    def stream(self, size: int, n: int) -> None:
        payload = bytes(size)
        self.qd.put(_ctl(n))
        for _ in range(n):
            self.qd.put(payload)
        self.qu.get(timeout=120)

    def stop(self) -> None:
        self.qd.put(b"stop")
        self.p.join(30)


class FasterFifoT(MpQueueT):
    name = "faster-fifo"

    def make_queue(self, ctx: Any, max_size: int) -> Any:
        import faster_fifo

        return faster_fifo.Queue(max_size_bytes=max(4 * max_size, 1 << 20))


def transports() -> list[Transport]:
    out: list[Transport] = [ChannelT(), FdT(), QueueT(), PipeT(), MpQueueT()]
    try:
        import faster_fifo  # noqa: F401

        out.append(FasterFifoT())
    except ImportError:
        print("faster-fifo not installed: skipped (pip install faster-fifo)", file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path, help="write results here")
    args = ap.parse_args()
    sizes = [64, 1 << 10, 16 << 10, 256 << 10, 4 << 20] + ([] if args.quick else [64 << 20])
    ctx = mp.get_context("spawn")
    results: dict[str, dict[str, dict[str, float]]] = {}
    for t in transports():
        t.start(ctx, max(sizes))
        # Settle first: the child starting up and the scheduler placing both processes make
        # the first few hundred round trips unrepresentative.
        t_end = time.perf_counter() + 0.5
        while time.perf_counter() < t_end:
            t.round_trip(64)
        lat: dict[str, float] = {}
        thr: dict[str, float] = {}
        try:
            for size in sizes:
                if not t.supports(size):
                    continue
                reps = 200 if size <= 1 << 20 else (10 if size <= 4 << 20 else 3)
                if args.quick:
                    reps = max(3, reps // 4)
                lat[str(size)] = median_time(lambda s=size, t=t: t.round_trip(s), reps, warmup=20)
                # stream ~64 MiB (quick) or ~512 MiB of data, between 20 and 20,000 messages
                volume = (64 << 20) if args.quick else (512 << 20)
                n = max(20, min(20_000, volume // size))
                t0 = time.perf_counter()
                t.stream(size, n)
                thr[str(size)] = n * size / (time.perf_counter() - t0)
        finally:
            t.stop()
        results[t.name] = {"latency_s": lat, "throughput_Bps": thr}
        print(f"  {t.name} done", file=sys.stderr, flush=True)
    print(f"Message round trip (median) by size, {machine()}\n")
    names = list(results)
    rows = []
    for size in sizes:
        k = str(size)
        cells = [fmt_size(size)]
        for n in names:
            v = results[n]["latency_s"].get(k)
            cells.append(fmt_time(v) if v else "-")
        base = results["shmipc channel"]["latency_s"].get(k)
        pipe = results["mp.Pipe"]["latency_s"].get(k)
        cells.append(fmt_ratio(pipe / base) if base and pipe else "-")
        rows.append(cells)
    print(table(["size", *names, "Pipe/channel"], rows))
    print("\nOne-way throughput (MB/s, streaming)\n")
    rows = []
    for size in sizes:
        k = str(size)
        cells = [fmt_size(size)]
        for n in names:
            v = results[n]["throughput_Bps"].get(k)
            cells.append(f"{v / 1e6:,.0f}" if v else "-")
        rows.append(cells)
    print(table(["size", *names], rows))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "sizes": sizes, "results": results}))


if __name__ == "__main__":
    main()
