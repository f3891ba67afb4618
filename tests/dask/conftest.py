"""Fixtures of the Dask backend tests: leak checks for fds and /dev/shm."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Iterator

import pytest


def _open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def _shm_entries() -> set[str]:
    return set(os.listdir("/dev/shm"))


@pytest.fixture(autouse=True)
def no_dev_shm_entries() -> Iterator[None]:
    """The backend's segments are memfds: it must never leave a name in /dev/shm. (Other
    programs on this machine create entries there too: only names with "dask" count.)"""
    before = _shm_entries()
    yield
    after = {e for e in _shm_entries() - before if "dask" in e}
    assert not after, f"test left {sorted(after)} in /dev/shm"


@pytest.fixture
def no_fd_leaks() -> Iterator[None]:
    """Fails the test if this process has more fds open afterwards (idle segments and cached
    mappings are given back first: they are the backend's on purpose)."""
    from multiprocessing import resource_tracker

    import shmipc.dask

    resource_tracker.ensure_running()  # spawning starts it once, with a pipe for good
    gc.collect()
    shmipc.dask.release_idle_memory()
    before = _open_fds()
    yield
    for _ in range(50):  # closing comms finish on the loop; let finalizers run
        gc.collect()
        shmipc.dask.release_idle_memory()
        leaked = _open_fds() - before
        if not leaked:
            break
        time.sleep(0.02)
    assert not leaked, f"leaked fds: {sorted(leaked)} -> " + ", ".join(
        _describe(fd) for fd in sorted(leaked)
    )


def _describe(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"
