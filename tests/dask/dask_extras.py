"""The optional extra these tests need: a skip with a reason when it is missing, a failure
when SHMIPC_REQUIRE_EXTRAS=1 (CI installs shmipc[dask] and sets it)."""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Coroutine
from typing import Any

import pytest

REQUIRED = os.environ.get("SHMIPC_REQUIRE_EXTRAS") == "1"


def require(*modules: str) -> None:
    for name in modules:
        if REQUIRED:
            importlib.import_module(name)  # an ImportError fails the run
        else:
            pytest.importorskip(name, reason=f"{name} is not installed: pip install 'shmipc[dask]'")


def run(coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
    """Runs a coroutine on a fresh event loop, failing (not hanging) after `timeout`."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))
