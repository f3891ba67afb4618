"""Code that runs in other processes: a listener process for the comm tests (spawn) and the
functions Dask workers execute (importable by reference in spawned workers)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import numpy as np


def echo_listener(address: str, out: Any) -> None:
    """Serves an echo shm:// listener until killed; puts its contact address on `out`."""

    async def main() -> None:
        from distributed.comm import listen

        async def echo(comm: Any) -> None:
            try:
                while True:
                    await comm.write(await comm.read())
            except OSError:  # CommClosedError: the peer went away
                return

        async with listen(address, echo) as listener:
            out.put(listener.contact_address)
            await asyncio.sleep(3600)

    asyncio.run(main())


# ---- task functions


def filled(nbytes: int, value: int) -> np.ndarray:
    return np.full(nbytes, value, dtype=np.uint8)


def plus_one(x: np.ndarray) -> np.ndarray:
    return x + np.uint8(1)


def summary(x: np.ndarray) -> tuple[int, int, int, bool]:
    """Size, first and last byte, and whether every byte equals the first."""
    return int(x.nbytes), int(x[0]), int(x[-1]), bool((x == x[0]).all())


def total(*xs: np.ndarray) -> int:
    return int(sum(int(x.sum(dtype=np.uint64)) for x in xs))


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def pid() -> int:
    return os.getpid()


def stats() -> dict[str, int]:
    import shmipc.dask

    return shmipc.dask.transfer_stats()


def release_idle() -> int:
    import gc

    import shmipc.dask

    gc.collect()
    return shmipc.dask.release_idle_memory()
