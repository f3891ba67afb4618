"""Helpers for the tests (a module of its own: `conftest` names differ per test folder)."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import time

_counter = itertools.count()


def fresh_name(prefix: str = "t") -> str:
    """A name no other test (or run) uses: pid + start time + counter."""
    return f"shmipc-test-{prefix}-{os.getpid()}-{int(time.time() * 1000) % 10**8}-{next(_counter)}"


def join_all(procs: list[mp.process.BaseProcess], timeout: float = 60) -> None:
    """Joins every process within `timeout`; kills and fails on a hang."""
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
        p.join(5)
    assert not hung, f"{len(hung)} process(es) hung"
