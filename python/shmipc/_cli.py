"""Command line: ``python -m shmipc ls | rm | info | bench`` (also the ``shmipc`` script)."""

from __future__ import annotations

import argparse
import datetime as _dt
import fcntl
import json
import os
import platform
import resource
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__, _bench, _core, _cpp

SHM_DIR = "/dev/shm"


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _state(o: dict[str, Any]) -> str:
    if o["owner_alive"]:
        return "alive"
    if o["stale"]:
        return "stale"
    return "persistent" if o["persistent"] else "orphan"


def cmd_ls(args: argparse.Namespace) -> int:
    objs = _core.list_objects(args.dir)
    if args.stale:
        objs = [o for o in objs if o["stale"]]
    if args.json:
        for o in objs:
            o["state"] = _state(o)
        print(json.dumps(objs, indent=2))
        return 0
    if not objs:
        print(f"no shmipc objects in {args.dir}")
        return 0
    rows = [("KIND", "NAME", "SIZE", "MODE", "OWNER PID", "STATE", "CREATED")]
    for o in objs:
        created = (
            _dt.datetime.fromtimestamp(o["created_unix_ns"] / 1e9).strftime("%Y-%m-%d %H:%M:%S")
            if o["created_unix_ns"]
            else "-"
        )
        rows.append(
            (
                o["kind"],
                o["name"],
                _human(o["size"]),
                f"{o['mode']:04o}",
                str(o["owner_pid"] or "-"),
                _state(o) + (" (persistent)" if o["persistent"] and o["owner_alive"] else ""),
                created,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    rc = 0
    if args.stale:
        for name in _core.remove_stale_objects(args.dir):
            print(f"removed stale {name}")
    ours = {o["name"].lstrip("/") for o in _core.list_objects(args.dir)}
    for name in args.names:
        try:
            norm = _core.normalize_name(name)
            base = norm.lstrip("/")
            present = os.path.lexists(os.path.join(args.dir, base))
            known = base in ours or (present and _core.stream_info(norm)["is_stream"])
            if present and not known and not args.force:
                print(
                    f"shmipc rm: {name}: not a shmipc object (left alone; --force removes it)",
                    file=sys.stderr,
                )
                rc = 1
                continue
            if not _core.unlink(norm):
                print(f"shmipc rm: {name}: no such object", file=sys.stderr)
                rc = 1
            else:
                print(f"removed {norm.lstrip('/')}")
        except (ValueError, OSError) as e:
            print(f"shmipc rm: {name}: {e}", file=sys.stderr)
            rc = 1
    if not args.stale and not args.names:
        print("shmipc rm: give NAME(s) or --stale", file=sys.stderr)
        return 2
    return rc


def _probe(fn: Any) -> str:
    try:
        return str(fn())
    except Exception as e:  # report, don't fail: this is a diagnostic
        return f"no ({type(e).__name__}: {e})"


def _memfd_seals() -> str:
    fd = os.memfd_create("shmipc-probe", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, 4096)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
        future = getattr(fcntl, "F_SEAL_FUTURE_WRITE", 0x0010)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, future)
        return "yes (memfd_create, F_SEAL_SHRINK/GROW, F_SEAL_FUTURE_WRITE)"
    finally:
        os.close(fd)


def _ofd_locks() -> str:
    import struct

    fd = os.memfd_create("shmipc-probe", os.MFD_CLOEXEC)
    try:
        f_ofd_setlk = getattr(fcntl, "F_OFD_SETLK", 37)
        lk = struct.pack("hhqqi", fcntl.F_WRLCK, 0, 1 << 40, 1, 0)
        fcntl.fcntl(fd, f_ofd_setlk, lk)
        return "yes (F_OFD_SETLK)"
    finally:
        os.close(fd)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as e:
        return f"unavailable ({e.strerror})"


def _lim(v: int) -> str:
    return "unlimited" if v == resource.RLIM_INFINITY else str(v)


def cmd_info(args: argparse.Namespace) -> int:
    st = os.statvfs(args.dir)
    total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    memlock = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    objs = _core.list_objects(args.dir)
    pool = _core.pool_stats()
    lines = [
        ("shmipc", __version__),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("kernel", f"{platform.system()} {platform.release()} {platform.machine()}"),
        (
            f"{args.dir}",
            f"{_human(total)} total, {_human(total - free)} used, {_human(free)} available",
        ),
        ("shmipc objects", f"{len(objs)} ({sum(o['stale'] for o in objs)} stale)"),
        ("memfd + sealing", _probe(_memfd_seals)),
        ("OFD locks", _probe(_ofd_locks)),
        ("page size", f"{_core.page_size()} bytes"),
        ("THP for shmem", _read("/sys/kernel/mm/transparent_hugepage/shmem_enabled")),
        ("open files limit", f"soft {_lim(nofile[0])}, hard {_lim(nofile[1])}"),
        ("locked memory limit", f"soft {_lim(memlock[0])}, hard {_lim(memlock[1])}"),
        ("system open files", _read("/proc/sys/fs/file-nr").replace("\t", " / ")),
        ("buffer pool (this process)", f"limit {_human(pool['limit_bytes'])}"),
    ]
    w = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"{k.ljust(w)}  {v}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    return _bench.main(quick=not args.full)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="shmipc", description="Inspect and manage shmipc objects.")
    p.add_argument("--dir", default=SHM_DIR, help=argparse.SUPPRESS)
    # Where the C++ API is (as `python -m pybind11 --cmakedir`): print and exit.
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--cmake-dir", action="store_true", help="print the directory of shmipcConfig.cmake"
    )
    where.add_argument("--include", action="store_true", help="print the C++ include directory")
    where.add_argument(
        "--pkgconfig-dir", action="store_true", help="print the directory of shmipc.pc"
    )
    sub = p.add_subparsers(dest="cmd")
    ls = sub.add_parser("ls", help="list live and stale shmipc objects in /dev/shm")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.add_argument("--stale", action="store_true", help="only stale objects")
    ls.set_defaults(fn=cmd_ls)
    rm = sub.add_parser("rm", help="unlink objects by name (recovery)")
    rm.add_argument("names", nargs="*", metavar="NAME")
    rm.add_argument("--stale", action="store_true", help="remove every stale object")
    rm.add_argument(
        "--force", action="store_true", help="also remove a NAME that is not a shmipc object"
    )
    rm.set_defaults(fn=cmd_rm)
    info = sub.add_parser("info", help="/dev/shm size and use, kernel features, limits")
    info.set_defaults(fn=cmd_info)
    bench = sub.add_parser("bench", help="run a quick benchmark suite against the stdlib")
    bench.add_argument("--full", action="store_true", help="longer runs, bigger sizes")
    bench.set_defaults(fn=cmd_bench)
    args = p.parse_args(argv)
    if args.cmake_dir or args.include or args.pkgconfig_dir:
        if args.cmake_dir:
            print(_cpp.get_cmake_dir())
        elif args.include:
            print(_cpp.get_include())
        else:
            print(_cpp.get_pkgconfig_dir())
        return 0
    if args.cmd is None:
        p.error("a command is required (ls, rm, info, bench) or --cmake-dir / --include")
    return int(args.fn(args))
