"""The modules of the Python layer import one another in one direction, with no cycle.

ORDER is the layering (docs/architecture.md, "Python layer"): the extension, then the modules
every kind shares, then the kinds, then Heap (which opens them all), the package, and what is
built on the package. A module imports only modules before it (``if TYPE_CHECKING:`` imports,
which never run, are exempt), and each module before the package imports in a fresh
interpreter on its own, without the package's ``__init__`` and without loading anything later.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

import shmipc

PKG = Path(shmipc.__file__).parent
ORDER = [
    "_core",
    "_errors",
    "_validate",
    "_multiprocessing",
    "_wait",
    "_cpp",
    "_stream",
    "_descriptor",
    "_buffer",
    "_ndarray",
    "_block",
    "_objects",
    "_async",
    "_value",
    "_channel",
    "_dict",
    "_topic",
    "_heap",
    "_queue",
    "_bench",
    "__init__",
    "_cli",
    "__main__",
    "torch",
    "dask",
]
BEFORE_INIT = ORDER[1 : ORDER.index("__init__")]
MODULES = sorted(p.stem for p in PKG.glob("*.py"))


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _package_imports(tree: ast.AST) -> list[tuple[str, int]]:
    """(module of this package, line) for every import that runs (at any depth)."""
    out: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module is None:  # from . import x, y
                for alias in node.names:
                    name = alias.name if alias.name in MODULES or alias.name == "_core" else None
                    out.append((name or "__init__", node.lineno))
            elif node.level == 1 and node.module:  # from .x import y
                out.append((node.module.split(".")[0], node.lineno))
            elif node.level == 0 and node.module and node.module.split(".")[0] == "shmipc":
                parts = node.module.split(".")
                out.append((parts[1] if len(parts) > 1 else "__init__", node.lineno))
            elif node.level > 1:
                raise AssertionError(f"line {node.lineno}: relative import beyond the package")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "shmipc":
                    out.append((parts[1] if len(parts) > 1 else "__init__", node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def test_every_module_of_the_package_has_its_place_in_the_order() -> None:
    assert sorted(set(ORDER) - {"_core"}) == MODULES
    assert len(set(ORDER)) == len(ORDER)


@pytest.mark.parametrize("module", MODULES)
def test_a_module_imports_only_modules_before_it(module: str) -> None:
    tree = ast.parse((PKG / f"{module}.py").read_text(), f"{module}.py")
    me = ORDER.index(module)
    later = [(m, line) for m, line in _package_imports(tree) if ORDER.index(m) >= me]
    assert not later, f"shmipc/{module}.py imports modules at or after itself: {later}"


def test_the_check_sees_nested_imports_and_exempts_type_checking_only() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ._heap import Heap\n"
        "def f():\n    from ._channel import Channel\n    import shmipc._topic\n"
        "from . import _core, __version__\n"
    )
    found = [m for m, _ in _package_imports(tree)]
    assert found == ["_channel", "_topic", "_core", "__init__"]


_ALONE = """
import importlib, importlib.util, json, sys
spec = importlib.util.find_spec("shmipc")
pkg = importlib.util.module_from_spec(spec)  # the package, its __init__ not run
sys.modules["shmipc"] = pkg
importlib.import_module("shmipc." + sys.argv[1])
print(json.dumps(sorted(m.split(".")[1] for m in sys.modules if m.startswith("shmipc."))))
"""


@pytest.mark.parametrize("module", BEFORE_INIT)
def test_a_module_imports_alone_in_a_fresh_interpreter(module: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _ALONE, module], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout.splitlines()[-1])
    me = ORDER.index(module)
    assert module in loaded
    later = [m for m in loaded if m in ORDER and ORDER.index(m) > me]
    assert not later, f"importing shmipc.{module} loaded later modules {later}"


@pytest.mark.parametrize("module", ORDER[ORDER.index("__init__") + 1 :])
def test_a_module_after_the_package_imports_in_a_fresh_interpreter(module: str) -> None:
    if module in ("torch", "dask"):
        needs = {"torch": "torch", "dask": "distributed"}[module]
        if importlib.util.find_spec(needs) is None:
            pytest.skip(f"{needs} is not installed")
    out = subprocess.run(
        [sys.executable, "-c", f"import shmipc.{module}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
