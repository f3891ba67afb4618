"""The optional extra these tests need: a skip with a reason when it is missing, a failure
when SHMIPC_REQUIRE_EXTRAS=1 (CI installs shmipc[torch] and sets it)."""

from __future__ import annotations

import importlib
import os

import pytest

REQUIRED = os.environ.get("SHMIPC_REQUIRE_EXTRAS") == "1"


def require(*modules: str) -> None:
    for name in modules:
        if REQUIRED:
            importlib.import_module(name)  # an ImportError fails the run
        else:
            pytest.importorskip(
                name, reason=f"{name} is not installed: pip install 'shmipc[torch]'"
            )
