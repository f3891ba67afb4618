"""Fixtures shared by tests/python and tests/hostile: fresh names, leak checks for /dev/shm
and fds, a spawn context."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from collections.abc import Iterator

import pytest

from testutil import fresh_name


def _shm_entries() -> set[str]:
    """Entries this test process is responsible for: fresh names carry our pid (other test
    runs may work in parallel), temporaries of ours carry it too."""
    pid = f"-{os.getpid()}-"
    return {
        n
        for n in os.listdir("/dev/shm")
        if (n.startswith("shmipc-test-") and pid in n) or n.startswith(f".shmipc-tmp{pid}")
    }


def _open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


@pytest.fixture
def name() -> Iterator[str]:
    """A fresh shared-memory name; the test fails if it is left in /dev/shm."""
    n = fresh_name()
    yield n
    leftover = [e for e in os.listdir("/dev/shm") if e == n or e.startswith(n + ".")]
    for e in leftover:
        os.unlink(os.path.join("/dev/shm", e))
    assert not leftover, f"test left {leftover} in /dev/shm"


@pytest.fixture(autouse=True)
def ctrl_c_raises_keyboard_interrupt() -> Iterator[None]:
    """Tests send SIGINT and expect KeyboardInterrupt. A runner started in the background (or
    by a CI service) may have SIGINT ignored, which Python and every child it spawns would
    inherit; install Python's own handler for the test (spawned children then get it too)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(autouse=True)
def no_shm_leaks() -> Iterator[None]:
    before = _shm_entries()
    yield
    after = _shm_entries() - before
    for e in after:
        try:
            os.unlink(os.path.join("/dev/shm", e))
        except FileNotFoundError:
            pass
    assert not after, f"test left {sorted(after)} in /dev/shm"


@pytest.fixture
def no_fd_leaks() -> Iterator[None]:
    """Fails the test if it leaves fds open (the buffer pool is cleared first)."""
    import shmipc

    shmipc._core.clear_pool()
    before = _open_fds()
    yield
    import gc

    gc.collect()
    shmipc._core.clear_pool()
    leaked = _open_fds() - before
    assert not leaked, f"leaked fds: {sorted(leaked)}"


@pytest.fixture(scope="session")
def spawn() -> mp.context.SpawnContext:
    return mp.get_context("spawn")
