"""Torture suite set-up: trial count, a fast forkserver context, shared fixtures."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import time
from collections.abc import Iterator

import pytest

_counter = itertools.count()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--torture-trials",
        type=int,
        default=int(os.environ.get("SHMIPC_TORTURE_TRIALS", "50")),
        help="SIGKILL trials per object kind (default 50, env SHMIPC_TORTURE_TRIALS)",
    )


@pytest.fixture(scope="session")
def trials(request: pytest.FixtureRequest) -> int:
    return int(request.config.getoption("--torture-trials"))


@pytest.fixture(scope="session")
def ctx() -> mp.context.ForkServerContext:
    """forkserver: each participant is a fork of a clean, preloaded server (fast, no threads)."""
    c = mp.get_context("forkserver")
    c.set_forkserver_preload(["numpy", "shmipc", "workers_stress"])
    return c


@pytest.fixture
def name() -> Iterator[str]:
    """A fresh shared-memory name; fails the test if it (or name.N) is left in /dev/shm."""
    n = f"shmipc-stress-{os.getpid()}-{int(time.time() * 1000) % 10**8}-{next(_counter)}"
    yield n
    left = [e for e in os.listdir("/dev/shm") if e == n or e.startswith(n + ".")]
    for e in left:
        os.unlink(os.path.join("/dev/shm", e))
    assert not left, f"left {left} in /dev/shm"
