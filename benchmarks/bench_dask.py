"""Dask worker-to-worker transfers on one host: shm:// (shmipc.dask) vs tcp://, same run.

Two LocalClusters, one per protocol, each with 2 worker processes (1 thread each), running at
once and measured in alternating rounds (the VM is shared: drift hits both). Worker a
holds a uint8 array; worker b fetches it with distributed's own get_data (the call a worker
makes to gather a dependency: request, serialize, transfer, deserialize) and drops it; then
the same with one read of every page of the received array (the data made usable: shm://
maps its pages, tcp:// has written them). The first fetch of each size is reported on its
own: shm:// allocates its segment then (on this VM a fresh shared page costs ~4 µs), later
fetches reuse it. Small messages: round trip of distributed's echo RPC from b to a.
Also: a task on worker b that takes the array held by a (client.submit -> result), which
adds the scheduler's round trips to the transfer.

    python benchmarks/bench_dask.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import fmt_ratio, fmt_time, machine, table  # noqa: E402

MB = 1_000_000


def filled(nbytes: int) -> np.ndarray:
    return np.full(nbytes, 7, dtype=np.uint8)


def nbytes_of(x: np.ndarray) -> int:
    return int(x.nbytes)


async def fetch_times(
    source: str, key: str, reps: int, touch: bool, dask_worker: Any = None
) -> list[float]:
    """On worker b: time `reps` fetches of `key` from worker `source` (plus a page walk)."""
    from distributed.worker import get_data_from_worker

    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        resp = await get_data_from_worker(dask_worker.rpc, [key], source, who=dask_worker.address)
        x = resp["data"][key]
        if touch:
            x[::4096].sum()
        out.append(time.perf_counter() - t0)
        del resp, x
        await asyncio.sleep(0.02)  # let the receiver's release reach the sender (shm://)
    return out


async def echo_times(source: str, reps: int, dask_worker: Any = None) -> list[float]:
    rpc = dask_worker.rpc(source)
    await rpc.echo(data=b"x" * 64)
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        await rpc.echo(data=b"x" * 64)
        out.append(time.perf_counter() - t0)
    return out


class Side:
    """One protocol's LocalCluster (2 worker processes) with a client."""

    def __init__(self, protocol: str) -> None:
        from distributed import Client, LocalCluster

        self.cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            protocol=protocol,
            dashboard_address=":0",
        )
        self.client = Client(self.cluster, timeout=120)
        self.client.wait_for_workers(2, timeout=120)
        self.a, self.b = sorted(self.client.scheduler_info()["workers"])
        self.res: dict[str, Any] = {"first": {}, "fetch": {}, "touch": {}, "task": {}}

    def close(self) -> None:
        self.client.close(timeout=60)
        self.cluster.close(timeout=60)

    def run_b(self, fn: Any, *args: Any) -> Any:
        return self.client.run(fn, *args, workers=[self.b])[self.b]

    def hold(self, n: int) -> Any:
        from distributed import wait

        fut = self.client.submit(filled, n, workers=[self.a], pure=False)
        wait(fut, timeout=300)
        return fut

    def fetch_round(self, n: int, fut: Any, reps: int) -> None:
        if n not in self.res["first"]:
            self.res["first"][n] = self.run_b(fetch_times, self.a, fut.key, 1, False)[0]
        self.res["fetch"].setdefault(n, []).extend(
            self.run_b(fetch_times, self.a, fut.key, reps, False)
        )
        self.res["touch"].setdefault(n, []).extend(
            self.run_b(fetch_times, self.a, fut.key, reps, True)
        )

    def task_round(self, n: int, reps: int) -> None:
        times = self.res["task"].setdefault(n, [])
        for _ in range(reps):
            # A new key each time (b keeps a replica of a key it used), made before the
            # clock starts.
            fut = self.hold(n)
            t0 = time.perf_counter()
            self.client.submit(nbytes_of, fut, workers=[self.b], pure=False).result(timeout=300)
            times.append(time.perf_counter() - t0)
            del fut


def measure(sizes: list[int], reps: dict[int, int], echo_reps: int) -> tuple[Side, Side]:
    """Both clusters run at once and take turns, so drift of this shared VM hits both."""
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "60s"}):
        tcp, shm = Side("tcp://"), Side("shm://")
        try:
            for side in (tcp, shm):
                side.res["echo"] = side.run_b(echo_times, side.a, 50)  # warm-up
                side.res["echo"] = []
            for _ in range(3):
                for side in (tcp, shm):
                    side.res["echo"] += side.run_b(echo_times, side.a, echo_reps // 3)
            for n in sizes:
                futs = {side: side.hold(n) for side in (tcp, shm)}
                for _ in range(3):
                    for side in (tcp, shm):
                        side.fetch_round(n, futs[side], -(-reps[n] // 3))
                del futs
                for side in (tcp, shm):
                    side.task_round(n, 1)  # warm-up
                    side.res["task"][n] = []
                for _ in range(3):
                    for side in (tcp, shm):
                        side.task_round(n, max(1, reps[n] // 6))
        finally:
            for side in (tcp, shm):
                side.close()
    return tcp, shm


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, no 1 GB")
    args = ap.parse_args()
    try:
        import distributed  # noqa: F401
    except ImportError:
        print("distributed is not installed: pip install 'shmipc[dask]'")
        return 0
    sizes = [1 * MB, 100 * MB] + ([] if args.quick else [1000 * MB])
    reps = {1 * MB: 30, 100 * MB: 12, 1000 * MB: 6}
    if args.quick:
        reps = {n: max(3, r // 3) for n, r in reps.items()}
    echo_reps = 300 if args.quick else 2000
    tcp_side, shm_side = measure(sizes, reps, echo_reps)
    tcp, shm = tcp_side.res, shm_side.res

    def size(n: int) -> str:
        return f"{n // MB:,} MB"

    print(f"Machine: {machine()}\n")
    print("Worker b fetches an array held by worker a (distributed's get_data; median)\n")
    rows = []
    for n in sizes:
        ft, fs = med(tcp["fetch"][n]), med(shm["fetch"][n])
        tt, ts = med(tcp["touch"][n]), med(shm["touch"][n])
        rows.append(
            [
                size(n),
                fmt_time(ft),
                fmt_time(fs),
                fmt_ratio(ft / fs),
                fmt_time(tt),
                fmt_time(ts),
                fmt_ratio(tt / ts),
                fmt_time(tcp["first"][n]),
                fmt_time(shm["first"][n]),
            ]
        )
    print(
        table(
            [
                "array",
                "tcp://",
                "shm://",
                "tcp/shm",
                "tcp:// + read pages",
                "shm:// + read pages",
                "tcp/shm",
                "first fetch tcp://",
                "first fetch shm://",
            ],
            rows,
        )
    )
    et, es = med(tcp["echo"]), med(shm["echo"])
    print(
        f"\nSmall-message round trip (echo RPC, 64 B, b -> a -> b; median of {echo_reps}): "
        f"tcp:// {fmt_time(et)}, shm:// {fmt_time(es)}, tcp/shm {fmt_ratio(et / es)}\n"
    )
    print("A task on worker b using the array held by worker a (submit -> result; median)\n")
    rows = []
    for n in sizes:
        t, s = med(tcp["task"][n]), med(shm["task"][n])
        rows.append([size(n), fmt_time(t), fmt_time(s), fmt_ratio(t / s)])
    print(table(["array", "tcp://", "shm://", "tcp/shm"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
