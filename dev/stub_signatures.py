"""Second half of dev/check_stubs: what stubtest cannot see in a pybind11 module.

stubtest compares signatures only where inspect.signature() works; pybind11 functions (and the
C-API methods of Block and ChannelCore) carry no __text_signature__, so their parameters go
unchecked, and stubtest ignores private runtime names missing from the stub. This script reads
each function's signature line from its docstring (pybind11 writes
"name(self: T, a: int, b: object = None) -> R"; our C-API methods "name(a=None) -> R") and
compares parameter names and which ones have defaults with the stub; pybind11's unnamed
parameters (arg0, arg1, ...) must be positional-only (before "/") in the stub. It also lists
runtime names, private ones included, that the stub lacks.

Usage: python dev/stub_signatures.py MODULE STUB.pyi   (exit status 1 on any mismatch)
"""

from __future__ import annotations

import ast
import importlib
import re
import sys
from typing import Any

Param = tuple[str, bool, bool]  # name, has a default, positional-only


def split_top(text: str) -> list[str]:
    """Splits at commas outside brackets and quotes."""
    parts: list[str] = []
    depth, cur, quote = 0, "", ""
    for ch in text:
        if quote:
            cur += ch
            if ch == quote:
                quote = ""
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
            continue
        cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def runtime_signatures(name: str, obj: object) -> list[list[tuple[str, bool]]]:
    """Every signature line of the docstring (several for overloads)."""
    sigs = []
    for line in (getattr(obj, "__doc__", None) or "").splitlines():
        line = re.sub(r"^\d+\. ", "", line.strip())
        if not (line.startswith(name + "(") and ") -> " in line):
            continue
        params = []
        for p in split_top(line[len(name) + 1 : line.rindex(") -> ")]):
            pname = re.split(r"[:=]", p, maxsplit=1)[0].strip()
            params.append((pname, "=" in p.replace("->", "")))
        sigs.append(params)
    return sigs


def stub_params(fn: ast.FunctionDef) -> list[Param]:
    a = fn.args
    pos = a.posonlyargs + a.args
    first_default = len(pos) - len(a.defaults)
    res = [(x.arg, i >= first_default, i < len(a.posonlyargs)) for i, x in enumerate(pos)]
    if a.vararg:
        res.append(("*" + a.vararg.arg, False, False))
    elif a.kwonlyargs:
        res.append(("*", False, False))
    res += [(x.arg, d is not None, False) for x, d in zip(a.kwonlyargs, a.kw_defaults, strict=True)]
    if a.kwarg:
        res.append(("**" + a.kwarg.arg, False, False))
    return res


def matches(stub: list[Param], runtime: list[tuple[str, bool]]) -> bool:
    if len(stub) != len(runtime):
        return False
    for (sname, sdef, sposonly), (rname, rdef) in zip(stub, runtime, strict=True):
        if sdef != rdef:
            return False
        if re.fullmatch(r"arg\d+", rname):
            if not sposonly:  # unnamed at runtime: cannot be passed by keyword
                return False
        elif sname != rname:
            return False
    return True


def main() -> int:
    mod = importlib.import_module(sys.argv[1])
    with open(sys.argv[2]) as f:
        tree = ast.parse(f.read())
    errors: list[str] = []

    def check(qual: str, fn: ast.FunctionDef, rt: object, method: bool) -> None:
        sigs = runtime_signatures(fn.name, rt)
        if not sigs:
            return
        sp = stub_params(fn)
        if method and sp and sp[0][0] in ("self", "cls"):
            sp = sp[1:]
        for sig in sigs:
            if method and sig and sig[0][0] == "self":
                sig = sig[1:]
            if matches(sp, sig):
                return
        shown = [n + ("=..." if d else "") + (" (pos-only)" if p else "") for n, d, p in sp]
        errors.append(f"{qual}: stub has ({', '.join(shown)}); runtime: {sigs}")

    def dunder(n: str) -> bool:
        return n.startswith("__") and n.endswith("__")

    ours = {"__init__", "__len__", "__getitem__", "__setitem__", "__delitem__", "__contains__"}
    ours.add("__enter__")
    ours.add("__exit__")
    stub_top: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            stub_top.add(node.name)
            if hasattr(mod, node.name):
                check(node.name, node, getattr(mod, node.name), False)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            stub_top.add(node.target.id)
        elif isinstance(node, ast.ClassDef):
            stub_top.add(node.name)
            cls: Any = getattr(mod, node.name, None)
            if cls is None:
                continue
            members = {m.name: m for m in node.body if isinstance(m, ast.FunctionDef)}
            for name, m in members.items():
                if name in vars(cls) and not any(
                    isinstance(d, ast.Attribute) or (isinstance(d, ast.Name) and d.id == "property")
                    for d in m.decorator_list
                ):
                    check(f"{node.name}.{name}", m, getattr(cls, name), True)
            for name in vars(cls):
                if name == "_pybind11_conduit_v1_":  # pybind11's cross-module hook (2.13+)
                    continue
                if (not dunder(name) or name in ours) and name not in members:
                    # A pybind11 class without py::init has only the tp_init slot (a wrapper
                    # that raises "No constructor defined"); the stub gives it no __init__.
                    if (
                        name == "__init__"
                        and type(vars(cls)[name]).__name__ == "wrapper_descriptor"
                    ):
                        continue
                    errors.append(f"{node.name}.{name}: at runtime, not in the stub")
    for name in vars(mod):
        if not dunder(name) and name not in stub_top:
            errors.append(f"{name}: at runtime, not in the stub")
    for e in errors:
        print("error:", e)
    print(f"stub_signatures: {len(errors)} error(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
