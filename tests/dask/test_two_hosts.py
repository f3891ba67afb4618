"""One cluster on two hosts: two network namespaces joined by a veth pair stand for two
machines. Scheduler and worker a in the first, worker b in the second, all on shm://.
Data between the hosts goes over TCP; within the first host it stays on shared memory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dask_extras import require

require("distributed", "dask.array")

HERE = Path(__file__).resolve().parent
MB = 1_000_000
HOST_A, HOST_B = "10.213.0.1", "10.213.0.2"  # exist only inside the namespaces made here
PORT = 8786  # the namespaces are ours: no other listener there


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def two_hosts() -> Iterator[tuple[str, str]]:
    if shutil.which("ip") is None:
        pytest.skip("the ip command (iproute2) is not installed")
    ns_a, ns_b = f"shmipc-dask-{os.getpid()}-a", f"shmipc-dask-{os.getpid()}-b"
    made = []
    try:
        for ns in (ns_a, ns_b):
            r = ip("netns", "add", ns)
            if r.returncode != 0:
                reason = f"ip netns is not permitted here: {r.stderr.strip()}"
                print(reason)
                pytest.skip(reason)
            made.append(ns)
        steps = [
            ("-n", ns_a, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
             "netns", ns_b),
            ("-n", ns_a, "addr", "add", f"{HOST_A}/24", "dev", "veth0"),
            ("-n", ns_b, "addr", "add", f"{HOST_B}/24", "dev", "veth1"),
            ("-n", ns_a, "link", "set", "veth0", "up"),
            ("-n", ns_b, "link", "set", "veth1", "up"),
            ("-n", ns_a, "link", "set", "lo", "up"),
            ("-n", ns_b, "link", "set", "lo", "up"),
        ]  # fmt: skip
        for step in steps:
            r = ip(*step)
            assert r.returncode == 0, (step, r.stderr)
        yield ns_a, ns_b
    finally:
        for ns in made:
            ip("netns", "del", ns)


def in_ns(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, *args]


@pytest.mark.timeout(240)
def test_one_cluster_spans_two_hosts_over_tcp_and_keeps_shared_memory_within_a_host(
    two_hosts: tuple[str, str], tmp_path: Path
) -> None:
    ns_a, ns_b = two_hosts
    scheduler = f"shm://{HOST_A}:{PORT}"
    worker = ["-m", "distributed.cli.dask_worker", scheduler, "--nthreads", "1"]
    worker += ["--no-nanny", "--no-dashboard", "--memory-limit", "0"]
    commands = {
        "scheduler": in_ns(
            ns_a, "-m", "distributed.cli.dask_scheduler", "--protocol", "shm",
            "--host", HOST_A, "--port", str(PORT), "--no-dashboard",
        ),
        "a": in_ns(ns_a, *worker, "--host", HOST_A, "--name", "a"),
        "b": in_ns(ns_b, *worker, "--host", HOST_B, "--name", "b"),
    }  # fmt: skip
    procs = []
    try:
        for name, cmd in commands.items():
            log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
            procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
        out = subprocess.run(
            in_ns(ns_a, str(HERE / "two_hosts_client.py"), scheduler),
            capture_output=True,
            text=True,
            timeout=180,
        )
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in tmp_path.iterdir())
        assert out.returncode == 0, out.stderr[-3000:] + logs
    finally:
        for p, log in procs:
            p.kill()
            p.wait(30)
            log.close()
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["crossed"] == 3 * 20 * MB
    assert got["gathered"] == 5 * 20 * MB
    a, b, sched, client = got["a"], got["b"], got["scheduler"], got["client"]
    # Worker b is alone on its host: it reached the others over TCP only and sent them its
    # array over TCP.
    assert b["unix_comms"] == 0 and b["segment_bytes_sent"] == 0
    assert b["tcp_comms"] >= 2 and b["tcp_bytes_sent"] >= 20 * MB
    # On the first host everything else went over Unix sockets, large frames in memfds.
    assert a["tcp_comms"] >= 1 and a["unix_comms"] >= 1
    assert a["segment_bytes_sent"] >= 20 * MB
    assert sched["unix_comms"] >= 2 and sched["tcp_comms"] >= 1
    assert client["tcp_comms"] == 0 and client["segment_bytes_received"] >= 20 * MB
