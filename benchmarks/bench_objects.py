"""Objects with big buffers, shared arrays for Pool workers, and the torch DataLoader.

1. A dict with 4 x 64 MiB float64 arrays to another process and an ack back (median round
   trip): shmipc.MessageQueue (out of band through shared memory) vs multiprocessing.Queue
   vs pickle protocol 5 in band over a multiprocessing Pipe.
2. Pool.map (2 spawn workers) over 10 slices of a 1 GiB float64 array, each worker adding 1 in
   place: shmipc.ndarray slices vs multiprocessing.shared_memory by hand (name + offsets) vs
   plain NumPy slices (copied to the workers; their writes are lost).
3. DataLoader batches/s, 8 MiB batches, num_workers=2, second epoch of persistent workers:
   shmipc.torch.DataLoader vs torch's own (if torch is installed).

python benchmarks/bench_objects.py [--quick]
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import sys
import time
from multiprocessing import shared_memory
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import shmipc

from _common import fmt_ratio, fmt_time, machine, median_time

QUICK = "--quick" in sys.argv
ARR = (8 << 20) // 8 if QUICK else (64 << 20) // 8  # float64 elements per array
REPS = 3


def make_dict() -> dict[str, Any]:
    return {f"a{i}": np.full(ARR, float(i)) for i in range(4)} | {"meta": {"step": 1}}


# --- 1. dict of arrays ---------------------------------------------------------------------


def shm_echo(qname: str, aname: str, n: int) -> None:
    with shmipc.MessageQueue.attach(qname) as q, shmipc.MessageQueue.attach(aname) as a:
        for _ in range(n):
            d = q.get(timeout=120)
            a.put(float(d["a3"][-1]), timeout=120)
            del d


def mpq_echo(q: Any, a: Any, n: int) -> None:
    for _ in range(n):
        d = q.get(timeout=120)
        a.put(float(d["a3"][-1]))
        del d


def pipe_echo(conn: Any, n: int) -> None:
    for _ in range(n):
        d = pickle.loads(conn.recv_bytes())
        conn.send_bytes(pickle.dumps(float(d["a3"][-1]), 5))
        del d


def bench_dict() -> list[tuple[str, float]]:
    ctx = mp.get_context("spawn")
    n = REPS + 1  # median_time runs one warm-up round
    d = make_dict()
    rows = []

    tag = f"bench-objects-{os.getpid()}"
    with (
        shmipc.MessageQueue.create(tag + "-q", maxsize=4, max_message_size=1 << 16) as q,
        shmipc.MessageQueue.create(tag + "-a", maxsize=4, max_message_size=1024) as a,
    ):
        p = ctx.Process(target=shm_echo, args=(q.name, a.name, 2 * n))  # two variants
        p.start()

        def shm_once() -> None:
            q.put(d, timeout=120)
            assert a.get(timeout=120) == 3.0

        rows.append(("shmipc.MessageQueue (arrays copied in once)", median_time(shm_once, REPS)))

        heap = q.oob_heap
        assert heap is not None

        def shm_moved_once() -> None:
            # The arrays are produced in place in blocks of the queue's heap (as a producer
            # that knows where its output goes does): put moves the blocks, no copy.
            m: dict[str, Any] = {"meta": {"step": 1}}
            for i in range(4):
                arr = heap.allocate(ARR * 8).as_array(np.float64)
                arr[-1] = float(i)  # the production itself is not timed, as for the others
                m[f"a{i}"] = arr
            q.put(m, timeout=120)
            del m, arr
            assert a.get(timeout=120) == 3.0

        rows.append(
            (
                "shmipc.MessageQueue (arrays made in q.oob_heap, moved)",
                median_time(shm_moved_once, REPS),
            )
        )
        p.join(60)

    mq, ma = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=mpq_echo, args=(mq, ma, n))
    p.start()

    def mpq_once() -> None:
        mq.put(d)
        assert ma.get(timeout=120) == 3.0

    rows.append(("multiprocessing.Queue", median_time(mpq_once, REPS)))
    p.join(60)

    parent, child = ctx.Pipe()
    p = ctx.Process(target=pipe_echo, args=(child, n))
    p.start()

    def pipe_once() -> None:
        parent.send_bytes(pickle.dumps(d, 5))
        assert pickle.loads(parent.recv_bytes()) == 3.0

    rows.append(("pickle 5 in band over a Pipe", median_time(pipe_once, REPS)))
    p.join(60)
    return rows


# --- 2. Pool.map over slices ----------------------------------------------------------------


def add_one(a: np.ndarray) -> None:
    a += 1


def add_one_by_name(job: tuple[str, int, int]) -> None:
    name, lo, hi = job
    shm = shared_memory.SharedMemory(name=name)
    try:
        arr = np.ndarray((hi - lo,), np.float64, buffer=shm.buf, offset=lo * 8)
        arr += 1
        del arr
    finally:
        shm.close()


def bench_pool() -> list[tuple[str, float]]:
    n = (128 << 20) // 8 if QUICK else (1 << 30) // 8
    step = n // 10
    rows = []
    with mp.get_context("spawn").Pool(2) as pool:
        pool.map(int, range(4))  # workers up
        a = shmipc.zeros(n)
        t = median_time(
            lambda: pool.map(add_one, [a[i : i + step] for i in range(0, n, step)]), REPS
        )
        assert a[0] == REPS + 1  # warm-up included: every write reached the parent
        rows.append(("shmipc.ndarray slices", t))

        shm = shared_memory.SharedMemory(create=True, size=n * 8)
        try:
            b = np.ndarray((n,), np.float64, buffer=shm.buf)
            b[:] = 0
            jobs = [(shm.name, i, min(i + step, n)) for i in range(0, n, step)]
            rows.append(
                (
                    "shared_memory by hand",
                    median_time(lambda: pool.map(add_one_by_name, jobs), REPS),
                )
            )
            assert b[0] == REPS + 1
            del b
        finally:
            shm.close()
            shm.unlink()

        c = np.zeros(n)
        rows.append(
            (
                "plain slices (copies)",
                median_time(
                    lambda: pool.map(add_one, [c[i : i + step] for i in range(0, n, step)]), REPS
                ),
            )
        )
        assert c[0] == 0  # the workers' writes never came back
    return rows


# --- 3. DataLoader ----------------------------------------------------------------------------


def bench_loader() -> list[tuple[str, float]] | None:
    try:
        import torch
        from torch.utils.data import DataLoader as TorchLoader
    except ImportError:
        return None
    sys.path.insert(
        0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "torch")
    )
    from shmipc.torch import DataLoader

    import workers_torch as wt

    nb = 16 if QUICK else 48
    ds = wt.Big(n=2 * nb, nbytes=4 << 20)  # batches of 2 x 4 MiB
    rows = []
    for label, cls, extra in (
        ("shmipc.torch.DataLoader", DataLoader, {"shm_size": 256 << 20}),
        ("torch DataLoader", TorchLoader, {}),
    ):
        loader = cls(ds, batch_size=2, num_workers=2, persistent_workers=True, **extra)

        def epoch(loader: Any = loader) -> None:
            s = 0.0
            for b in loader:
                s += float(b[0, 0])
            assert s == sum(2.0 * i for i in range(nb))

        t = median_time(epoch, REPS)
        rows.append((label, nb / t))
        del loader
    torch.set_num_threads(torch.get_num_threads())
    return rows


def bench_limits() -> list[tuple[str, str, str]]:
    """Where torch's loader fails: 300 tensors per batch under RLIMIT_NOFILE=256."""
    import subprocess

    script = os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "tests", "torch", "run_loader.py"
    )
    rows = []
    for which in ("shmipc", "torch"):
        t0 = time.perf_counter()
        p = subprocess.run(
            [sys.executable, script, "nofile", which], capture_output=True, text=True, timeout=600
        )
        t = time.perf_counter() - t0
        if p.returncode == 0:
            rows.append((which, "ok", f"{t:.1f} s (4 batches, with start-up)"))
        else:
            err = (p.stderr.strip().splitlines() or ["?"])[-1]
            rows.append((which, "fails", err[:120].replace("|", "/")))
    return rows


def main() -> None:
    print(f"Machine: {machine()}; load average {os.getloadavg()[0]:.2f}")
    mb = ARR * 8 >> 20
    print(f"\n## dict of 4 x {mb} MiB float64 arrays to a child and an ack back (median)\n")
    rows = bench_dict()
    mpq = dict(rows)["multiprocessing.Queue"]
    print("| transport | round trip | mp.Queue / this |\n|---|---|---|")
    for label, t in rows:
        print(f"| {label} | {fmt_time(t)} | {fmt_ratio(mpq / t)} |")

    gb = "128 MiB" if QUICK else "1 GiB"
    print(f"\n## Pool.map (2 spawn workers) over 10 slices of a {gb} array, += 1 (median)\n")
    rows = bench_pool()
    base = rows[0][1]
    print("| slices as | time | vs shmipc |\n|---|---|---|")
    for label, t in rows:
        print(f"| {label} | {fmt_time(t)} | {fmt_ratio(t / base)} |")

    rows_l = bench_loader()
    if rows_l is None:
        print("\n(torch is not installed: no DataLoader table)")
        return
    print("\n## DataLoader, 8 MiB batches, num_workers=2, persistent workers (median epoch)\n")
    base = rows_l[0][1]
    print("| loader | batches/s | shmipc vs this |\n|---|---|---|")
    for label, r in rows_l:
        print(f"| {label} | {r:.1f} | {fmt_ratio(base / r)} |")

    print("\n## 300 tensors per batch, RLIMIT_NOFILE=256, num_workers=2\n")
    print("| loader | result | detail |\n|---|---|---|")
    for which, result, detail in bench_limits():
        print(f"| {which} | {result} | {detail} |")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"\n_{time.perf_counter() - t0:.0f} s_")
