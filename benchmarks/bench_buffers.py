"""Hand a NumPy array to a second process and back: shmipc vs the stdlib.

Round trip of one array (parent -> child -> parent), median per size, for:
  shmipc        send_array/recv_array of a Buffer-backed array over a Unix socket (zero copy:
                the array's memfd travels by fd; mappings are pooled, so no page faults)
  mp.Queue      multiprocessing.Queue (pickle + copy through a pipe)
  mp.Pipe       multiprocessing.Pipe (pickle + copy through a socket)
  SharedMemory  multiprocessing.shared_memory, a new segment per array (create + copy +
                unlink each way), names through a Pipe
The receiving side touches one element in every method.

    python benchmarks/bench_buffers.py [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import sys
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import shmipc  # noqa: E402

from _common import fmt_ratio, fmt_size, fmt_time, machine, median_time, table  # noqa: E402


# ---- children (module level for spawn) ----
def child_shmipc(sock: socket.socket) -> None:
    while True:
        try:
            arr = shmipc.recv_array(sock)
        except EOFError:
            return
        arr.flat[0] += 1
        shmipc.send_array(sock, arr)
        del arr


def child_queue(qin: Any, qout: Any) -> None:
    while (arr := qin.get()) is not None:
        arr.flat[0] += 1
        qout.put(arr)


def child_pipe(conn: Any) -> None:
    while (arr := conn.recv()) is not None:
        arr.flat[0] += 1
        conn.send(arr)


def _attach(name: str) -> shared_memory.SharedMemory:
    # Spawned children share the parent's resource tracker, so registrations balance out:
    # whoever unlinks a segment unregisters it.
    return shared_memory.SharedMemory(name=name)


def child_shm(conn: Any) -> None:
    while (msg := conn.recv()) is not None:
        name, shape, dtype = msg
        shm = _attach(name)
        arr = np.ndarray(shape, dtype, buffer=shm.buf)
        arr.flat[0] += 1
        out = shared_memory.SharedMemory(create=True, size=max(arr.nbytes, 1))
        np.ndarray(shape, dtype, buffer=out.buf)[...] = arr
        del arr
        shm.close()
        conn.send(out.name)
        out.close()


# ---- drivers ----
def run_shmipc(ctx: Any, arr: np.ndarray, reps: int) -> float:
    a, b = socket.socketpair()
    p = ctx.Process(target=child_shmipc, args=(b,))
    p.start()
    b.close()
    buf = shmipc.Buffer(arr.nbytes)
    state = {"x": buf.as_array(arr.dtype, arr.shape)}
    state["x"][...] = arr
    del buf

    def once() -> None:
        shmipc.send_array(a, state.pop("x"))
        state["x"] = shmipc.recv_array(a, timeout=60)
        _ = state["x"].flat[0]

    t = median_time(once, reps, warmup=2)
    a.close()
    p.join(30)
    return t


def run_queue(ctx: Any, arr: np.ndarray, reps: int) -> float:
    qin, qout = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=child_queue, args=(qin, qout))
    p.start()

    def once() -> None:
        qin.put(arr)
        _ = qout.get(timeout=120).flat[0]

    t = median_time(once, reps)
    qin.put(None)
    p.join(30)
    return t


def run_pipe(ctx: Any, arr: np.ndarray, reps: int) -> float:
    parent, child = ctx.Pipe()
    p = ctx.Process(target=child_pipe, args=(child,))
    p.start()

    def once() -> None:
        parent.send(arr)
        _ = parent.recv().flat[0]

    t = median_time(once, reps)
    parent.send(None)
    p.join(30)
    return t


def run_shm(ctx: Any, arr: np.ndarray, reps: int) -> float:
    parent, child = ctx.Pipe()
    p = ctx.Process(target=child_shm, args=(child,))
    p.start()

    def once() -> None:
        shm = shared_memory.SharedMemory(create=True, size=max(arr.nbytes, 1))
        np.ndarray(arr.shape, arr.dtype, buffer=shm.buf)[...] = arr
        parent.send((shm.name, arr.shape, arr.dtype))
        back = _attach(parent.recv())
        view = np.ndarray(arr.shape, arr.dtype, buffer=back.buf)
        _ = view.flat[0]
        del view
        back.close()
        back.unlink()
        shm.close()
        shm.unlink()

    t = median_time(once, reps)
    parent.send(None)
    p.join(30)
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, fewer repetitions")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    sizes = [1 << 10, 1 << 20, 64 << 20] + ([] if args.quick else [256 << 20])
    rows = []
    results: dict[int, dict[str, float]] = {}
    for size in sizes:
        arr = np.random.default_rng(0).random(size // 8)
        big = size >= 64 << 20
        reps = 3 if (big and args.quick) else (5 if big else 30)
        r = {
            "shmipc": run_shmipc(ctx, arr, 200),
            "mp.Queue": run_queue(ctx, arr, reps),
            "mp.Pipe": run_pipe(ctx, arr, reps),
            "SharedMemory": run_shm(ctx, arr, reps),
        }
        results[size] = r
        s = r["shmipc"]
        rows.append(
            [fmt_size(size)]
            + [fmt_time(v) for v in r.values()]
            + [fmt_ratio(r[k] / s) for k in ("mp.Queue", "mp.Pipe", "SharedMemory")]
        )
        print(f"  {fmt_size(size)} done", file=sys.stderr, flush=True)
    print(f"Array round trip parent -> child -> parent (median), {machine()}\n")
    print(
        table(
            [
                "size",
                "shmipc",
                "mp.Queue",
                "mp.Pipe",
                "SharedMemory (new per array)",
                "Queue/shmipc",
                "Pipe/shmipc",
                "SharedMemory/shmipc",
            ],
            rows,
        )
    )
    first, last = results[sizes[0]]["shmipc"], results[sizes[-1]]["shmipc"]
    print(
        f"\nshmipc time grows {last / first:.1f}x from {fmt_size(sizes[0])} to "
        f"{fmt_size(sizes[-1])} ({sizes[-1] // sizes[0]:,}x more data)"
    )


if __name__ == "__main__":
    main()
