"""Client of the two-host test, run inside the first network namespace: moves data between the
hosts and within one, then prints every process's shm:// transfer counters as JSON."""

from __future__ import annotations

import json
import sys

import numpy as np
from distributed import Client

import shmipc.dask

MB = 1_000_000


def make(nbytes: int, value: int) -> np.ndarray:
    return np.full(nbytes, value, dtype=np.uint8)


def total(x: np.ndarray) -> int:
    return int(x.sum(dtype=np.uint64))


def stats() -> dict[str, int]:
    import shmipc.dask

    return shmipc.dask.transfer_stats()


def main(address: str) -> None:
    with Client(address, timeout=60) as client:
        client.wait_for_workers(2, timeout=60)
        names = {v["name"]: k for k, v in client.scheduler_info()["workers"].items()}
        a, b = names["a"], names["b"]
        x = client.submit(make, 20 * MB, 3, workers=[b], pure=False)  # on the other host
        crossed = client.submit(total, x, workers=[a], pure=False).result(timeout=60)
        y = client.submit(make, 20 * MB, 5, workers=[a], pure=False)  # on this host
        gathered = total(client.gather(y))
        out = {
            "crossed": crossed,
            "gathered": gathered,
            "a": client.run(stats, workers=[a])[a],
            "b": client.run(stats, workers=[b])[b],
            "scheduler": client.run_on_scheduler(stats),
            "client": shmipc.dask.transfer_stats(),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
