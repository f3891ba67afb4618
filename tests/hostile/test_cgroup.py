"""Memory cgroups (issue 10 item 4): asking for more shared memory than the process's memory
cgroup allows is MemoryError at creation, not an OOM kill, and leaves nothing in /dev/shm. A
real cgroup (v1 memory controller or v2 with memory enabled) nested under ours, with a 64 MiB
limit; skipped with the reason where cgroups cannot be created."""

from __future__ import annotations

import os
from typing import Any

import pytest

import workers_hostile as W
from testutil import join_all

LIMIT = 64 << 20


def _our_memory_cgroup() -> str | None:
    """A directory under which we may create a memory cgroup, and the file holding its limit."""
    with open("/proc/self/cgroup") as f:
        lines = f.read().splitlines()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            base = "/sys/fs/cgroup/memory" + path
            if os.path.isdir(base) and os.access(base, os.W_OK):
                return base
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
                base = root + path
                ctl = os.path.join(base, "cgroup.subtree_control")
                if os.path.exists(ctl) and "memory" in open(ctl).read():
                    return base
    return None


@pytest.fixture
def memory_cgroup() -> Any:
    base = _our_memory_cgroup()
    if base is None:
        pytest.skip("no writable memory cgroup (v1 memory controller or v2 with memory)")
    path = os.path.join(base, f"shmipc-test-{os.getpid()}")
    try:
        os.mkdir(path)
    except OSError as e:
        pytest.skip(f"cannot create a memory cgroup here: {e}")
    v1 = os.path.exists(os.path.join(path, "memory.limit_in_bytes"))
    limit_file = "memory.limit_in_bytes" if v1 else "memory.max"
    with open(os.path.join(path, limit_file), "w") as f:
        f.write(str(LIMIT))
    yield os.path.join(path, "cgroup.procs")
    os.rmdir(path)


def test_more_than_the_cgroup_allows_is_memory_error_not_an_oom_kill(
    name: str, spawn: Any, memory_cgroup: str
) -> None:
    out = spawn.Queue()
    p = spawn.Process(target=W.inside_memory_cgroup, args=(memory_cgroup, name, out))
    p.start()
    results = out.get(timeout=120)
    join_all([p], 60)
    assert p.exitcode == 0, f"the process died (137 is an OOM kill): {p.exitcode}"
    assert [r[:2] for r in results] == [
        ("Buffer", "MemoryError"),
        ("Heap.anonymous", "MemoryError"),
        ("Heap.create", "MemoryError"),
    ], results
    assert all("cgroup" in r[2] for r in results), results
    mine = f".shmipc-tmp-{p.pid}-"
    leftovers = [e for e in os.listdir("/dev/shm") if name in e or e.startswith(mine)]
    assert not leftovers
