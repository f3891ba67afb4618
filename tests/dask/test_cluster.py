"""A real cluster on shm://: LocalCluster with worker processes, a dask.array job, a 100 MB
array moved between workers 100 times, and a worker SIGKILLed while its data is fetched."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dask_extras import require

require("distributed", "dask.array")

import dask  # noqa: E402
import dask.array as da  # noqa: E402
import numpy as np  # noqa: E402
from distributed import Client, LocalCluster, wait  # noqa: E402

import workers_dask as w  # noqa: E402

MB = 1_000_000
CALL = 120  # seconds: the bound of every client call


def start_cluster(**kwargs: Any) -> tuple[LocalCluster, Client]:
    with dask.config.set({"distributed.comm.timeouts.connect": "30s"}):
        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            protocol="shm://",
            dashboard_address=":0",
            **kwargs,
        )
        try:
            client = Client(cluster, timeout=CALL)
            client.wait_for_workers(2, timeout=CALL)
        except BaseException:
            cluster.close(timeout=30)
            raise
    return cluster, client


def stop_cluster(cluster: LocalCluster, client: Client) -> None:
    client.close(timeout=30)
    cluster.close(timeout=30)


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[LocalCluster, Client]]:
    cluster, client = start_cluster()
    try:
        yield cluster, client
    finally:
        stop_cluster(cluster, client)


def workers(client: Client) -> list[str]:
    return sorted(client.scheduler_info()["workers"])


def total_stats(client: Client) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in client.run(w.stats).values():
        for k, v in s.items():
            out[k] = out.get(k, 0) + v
    return out


@pytest.mark.timeout(300)
def test_every_address_of_the_cluster_is_shm_and_workers_talk_over_unix_sockets(
    cluster: tuple[LocalCluster, Client],
) -> None:
    lc, client = cluster
    assert lc.scheduler_address.startswith("shm://")
    assert all(a.startswith("shm://") for a in workers(client))
    client.submit(w.filled, 10, 1, pure=False).result(timeout=CALL)
    stats = total_stats(client)
    assert stats["unix_comms"] > 0
    assert stats["tcp_comms"] == 0  # one host: no TCP between these processes


@pytest.mark.timeout(300)
def test_a_dask_array_job_computes_the_same_result_as_numpy(
    cluster: tuple[LocalCluster, Client],
) -> None:
    _, client = cluster
    x = da.random.RandomState(42).random_sample((2000, 2000), chunks=(500, 500))
    y = (x @ x.T + x.T).mean(axis=0)  # all-to-all chunk transfers between the workers
    xs, ys = client.compute([x, y], sync=False)
    xv, yv = xs.result(timeout=CALL), ys.result(timeout=CALL)
    assert np.allclose(yv, (xv @ xv.T + xv.T).mean(axis=0))


@pytest.mark.timeout(300)
def test_a_100_mb_array_moves_between_workers_100_times_with_flat_fd_counts(
    cluster: tuple[LocalCluster, Client],
) -> None:
    _, client = cluster
    a, b = workers(client)
    before = total_stats(client)
    prev = client.submit(w.filled, 100 * MB, 0, workers=[a], pure=False)
    fds: list[dict[str, int]] = []
    for i in range(1, 101):
        # Each step runs where the previous result is not: one 100 MB transfer per step.
        cur = client.submit(w.plus_one, prev, workers=[a if i % 2 == 0 else b], pure=False)
        wait(cur, timeout=CALL)
        del prev
        prev = cur
        if i % 10 == 0:
            fds.append(client.run(w.fd_count))
    summary = client.submit(w.summary, prev, pure=False).result(timeout=CALL)
    assert summary == (100 * MB, 100, 100, True)
    after = total_stats(client)
    moved = after["segment_bytes_sent"] - before["segment_bytes_sent"]
    assert moved >= 100 * 100 * MB  # every transfer went through memfd segments
    assert after["tcp_comms"] == before["tcp_comms"] == 0
    # Segments are lent back and reused, not made anew for every transfer.
    assert after["segments_created"] - before["segments_created"] < 20
    for worker in (a, b):
        counts = [f[worker] for f in fds]
        assert max(counts) - min(counts) <= 8, (worker, counts)


@pytest.mark.timeout(300)
def test_a_worker_killed_while_its_data_is_fetched_is_replaced_and_the_result_is_right() -> None:
    cluster, client = start_cluster()
    try:
        b = workers(client)[1]
        client.run(w.release_idle, workers=[b])
        fds_before = client.run(w.fd_count, workers=[b])[b]
        for _attempt in range(3):
            a = next(x for x in workers(client) if x != b)
            chunks = [
                client.submit(w.filled, 50 * MB, i, workers=[a], allow_other_workers=True)
                for i in range(12)
            ]
            wait(chunks, timeout=CALL)
            victim = client.run(w.pid, workers=[a])[a]
            start = client.run(w.stats, workers=[b])[b]["segment_bytes_received"]
            result = client.submit(w.total, *chunks, workers=[b], pure=False)
            mid = False
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                got = client.run(w.stats, workers=[b])[b]["segment_bytes_received"] - start
                if got > 0:
                    mid = got < 12 * 50 * MB
                    break
                time.sleep(0.001)
            os.kill(victim, signal.SIGKILL)
            expected = sum(i * 50 * MB for i in range(12))
            assert result.result(timeout=CALL) == expected
            client.wait_for_workers(2, timeout=CALL)  # the nanny brought a new one up
            assert b in workers(client)  # the receiver survived
            del chunks, result
            if mid:
                break
        assert mid, "the kill never landed while the data was moving"
        # The surviving receiver kept no fds of the dead sender's segments.
        client.run(w.release_idle, workers=[b])
        assert client.run(w.fd_count, workers=[b])[b] <= fds_before + 4
    finally:
        stop_cluster(cluster, client)
