"""The command line: python -m shmipc ls | rm | info | bench."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import shmipc


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shmipc", *args], capture_output=True, text=True, timeout=120
    )


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_info_reports_dev_shm_and_kernel_features() -> None:
    r = run("info")
    assert r.returncode == 0, r.stderr
    assert "/dev/shm" in r.stdout and "memfd + sealing" in r.stdout and "yes" in r.stdout
    assert "open files limit" in r.stdout


def test_ls_lists_a_leftover_temporary_of_a_dead_creator_as_stale_and_rm_stale_removes_it() -> None:
    name = f".shmipc-tmp-{_dead_pid()}-abc-0"
    path = os.path.join("/dev/shm", name)
    with open(path, "wb") as f:
        f.write(b"x" * 100)
    try:
        r = run("ls", "--json")
        assert r.returncode == 0, r.stderr
        entry = [o for o in json.loads(r.stdout) if o["name"] == name]
        assert entry and entry[0]["kind"] == "temp" and entry[0]["state"] == "stale"
        r = run("rm", "--stale")
        assert r.returncode == 0 and name in r.stdout
        assert not os.path.exists(path)
    finally:
        if os.path.exists(path):
            os.unlink(path)


def test_ls_ignores_files_that_are_not_shmipc_objects(name: str) -> None:
    path = os.path.join("/dev/shm", name)
    with open(path, "wb") as f:
        f.write(os.urandom(4096))
    try:
        r = run("ls", "--json")
        assert name not in {o["name"] for o in json.loads(r.stdout)}
    finally:
        os.unlink(path)


def test_rm_of_a_missing_or_invalid_name_fails_with_a_message(name: str) -> None:
    r = run("rm", name)
    assert r.returncode == 1 and "no such object" in r.stderr
    r = run("rm", "a/b")
    assert r.returncode == 1 and "invalid" in r.stderr
    assert run("rm").returncode == 2


def test_rm_removes_a_named_object(name: str) -> None:
    path = os.path.join("/dev/shm", name)
    shmipc.SharedValue.create(name, 64, persistent=True).close()
    r = run("rm", name)
    assert r.returncode == 0 and not os.path.exists(path)


def test_rm_needs_force_for_a_file_that_is_not_a_shmipc_object(name: str) -> None:
    path = os.path.join("/dev/shm", name)
    open(path, "wb").close()
    r = run("rm", name)
    assert r.returncode == 1 and os.path.exists(path) and "--force" in r.stderr
    r = run("rm", "--force", name)
    assert r.returncode == 0 and not os.path.exists(path)


def test_unlink_of_a_missing_name_is_file_not_found(name: str) -> None:
    with pytest.raises(FileNotFoundError):
        shmipc.unlink(name)
    with pytest.raises(ValueError):
        shmipc.unlink("a/b")


def test_bench_runs_and_prints_ratios() -> None:
    r = subprocess.run(
        [sys.executable, "-c", "import shmipc._bench as b; b.main(quick=True)"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "array round trip" in r.stdout and "x" in r.stdout


def _create_and_die(kind: str, name: str) -> None:
    """Creates a non-persistent object, then dies without cleaning up (like a SIGKILL)."""
    code = {
        "heap": f"shmipc.Heap.create({name!r}, size=1 << 20)",
        "value": f"shmipc.SharedValue.create({name!r}, size=64)",
        "queue": f"shmipc.MessageQueue.create({name!r}, maxsize=4, max_message_size=64)",
        "stream": f"shmipc.open_stream({name!r}, 'w+b', owner=True)",
    }[kind]
    script = f"import os, shmipc\nobj = {code}\nos.kill(os.getpid(), 9)"
    r = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert r.returncode == -9


@pytest.mark.parametrize("kind", ["heap", "value", "queue", "stream"])
def test_ls_tells_live_objects_from_stale_ones_and_rm_stale_removes_only_the_stale(
    kind: str, name: str
) -> None:
    live = name + "-live"
    objs = {
        "heap": lambda: shmipc.Heap.create(live, size=1 << 20),
        "value": lambda: shmipc.SharedValue.create(live, size=64),
        "queue": lambda: shmipc.MessageQueue.create(live, maxsize=4, max_message_size=64),
        "stream": lambda: shmipc.open_stream(live, "w+b", owner=True),
    }
    mine = objs[kind]()
    try:
        _create_and_die(kind, name)
        listing = {o["name"]: o for o in json.loads(run("ls", "--json").stdout)}
        assert listing[name]["state"] == "stale" and listing[name]["kind"] == kind
        assert listing[live]["state"] == "alive" and listing[live]["kind"] == kind
        if kind != "stream":
            assert listing[live]["owner_pid"] == os.getpid()
        assert listing[live]["mode"] == 0o600
        r = run("rm", "--stale")
        assert r.returncode == 0 and name in r.stdout
        assert not os.path.exists(f"/dev/shm/{name}")
        assert os.path.exists(f"/dev/shm/{live}")
    finally:
        mine.close()
    assert not os.path.exists(f"/dev/shm/{live}")
