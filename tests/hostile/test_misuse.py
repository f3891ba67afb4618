"""Misuse through the API (issue 10 items 9 and 12): closing under a blocked thread, roles
after close, waking waiters on close, daemon threads at exit, argument errors, `shmipc rm`."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np
import pytest

import shmipc

import workers_hostile as W
from testutil import join_all


def _blocked(target: Any) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as e:  # noqa: BLE001 -- the test inspects it
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.2)
    return t, errors


def test_heap_close_while_another_thread_is_blocked_in_recv_ends_the_wait(name: str) -> None:
    heap = shmipc.Heap.create(name, 1 << 20)
    ch = heap.channel("c")
    t, errors = _blocked(lambda: ch.recv(timeout=30))
    heap.close()
    t.join(10)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ValueError)
    assert "closed" in str(errors[0])
    assert ch.closed


def test_heap_close_releases_its_channels_roles_in_this_process(name: str) -> None:
    with shmipc.Heap.create(name, 1 << 20) as owner:
        tx = owner.channel("c")
        tx.send(b"a")
        tx.send(b"b")
        first = shmipc.Heap.attach(name)
        assert first.channel("c").recv_bytes(timeout=5) == b"a"
        first.close()
        second = shmipc.Heap.attach(name)  # same process: the receiver role is free again
        assert second.channel("c").recv_bytes(timeout=5) == b"b"
        second.close()
        tx.close()


def test_queue_close_from_another_thread_wakes_a_blocked_get(name: str) -> None:
    q = shmipc.MessageQueue.create(name)
    t, errors = _blocked(lambda: q.get(timeout=30))
    q.close()
    t.join(20)
    assert not t.is_alive()
    # Woken by the close: ValueError, not queue.Empty at the get's timeout.
    assert len(errors) == 1 and isinstance(errors[0], ValueError), errors


@pytest.mark.parametrize("kind", ["heap", "queue"])
def test_a_daemon_thread_blocked_at_exit_leaves_no_stale_name(
    name: str, spawn: Any, kind: str
) -> None:
    ready = spawn.Value("b", 0)
    p = spawn.Process(target=W.exit_with_a_daemon_thread_blocked, args=(name, kind, ready))
    p.start()
    join_all([p], 60)
    assert ready.value == 1 and p.exitcode == 0
    assert not os.path.exists("/dev/shm/" + name)


def test_recv_of_an_array_record_delivers_it_as_a_block() -> None:
    heap = shmipc.Heap.anonymous(1 << 20)
    tx, rx = heap.channel("c"), heap.channel("c")
    tx.send_array(np.arange(10, dtype=np.int64))
    blk = rx.recv(timeout=5)  # not an error, and nothing discarded
    assert np.frombuffer(blk, dtype=np.int64).tolist() == list(range(10))
    blk.release()
    tx.close()
    rx.close()
    heap.close()


@pytest.mark.parametrize(
    "call, exc",
    [
        (lambda n: shmipc.MessageQueue.create(n, mode=0o4600), ValueError),
        (lambda n: shmipc.MessageQueue.create(n, mode=-1), ValueError),
        (lambda n: shmipc.MessageQueue.create(n, maxsize="3"), TypeError),
        (lambda n: shmipc.MessageQueue.attach(7), TypeError),
        (lambda n: shmipc.Heap.create(n, 1 << 20, mode=0o1777), ValueError),
        (lambda n: shmipc.Heap.attach(b"x"), TypeError),
        (lambda n: shmipc.SharedValue.create(n, size=True), TypeError),
        (lambda n: shmipc.Buffer(2**63), OverflowError),
        (lambda n: shmipc.Buffer(-1), ValueError),
        (lambda n: shmipc.Buffer("1"), TypeError),
        (lambda n: shmipc.open_stream(n, "wb", owner=True, mode=0o2600), ValueError),
    ],
)
def test_bad_arguments_are_type_value_or_overflow_errors_naming_the_parameter(
    name: str, call: Any, exc: type[BaseException]
) -> None:
    with pytest.raises(exc) as ei:
        call(name)
    assert "incompatible function arguments" not in str(ei.value)


@pytest.mark.parametrize("timeout, exc", [(-1, ValueError), ("1", TypeError), (True, TypeError)])
def test_timeouts_follow_one_rule_everywhere(name: str, timeout: Any, exc: type) -> None:
    heap = shmipc.Heap.anonymous(1 << 20)
    tx, rx = heap.channel("c"), heap.channel("c")
    with shmipc.MessageQueue.create(name) as q:
        calls = [
            lambda: rx.recv(timeout=timeout),
            lambda: tx.send(b"x", timeout=timeout),
            lambda: q.get(timeout=timeout),
            lambda: q.put(1, timeout=timeout),
            lambda: heap.allocate(64, timeout=timeout),
        ]
        for c in calls:
            with pytest.raises(exc, match="timeout"):
                c()
    tx.close()
    rx.close()
    heap.close()


def test_shmipc_rm_leaves_files_that_are_not_shmipc_objects_alone(name: str) -> None:
    path = "/dev/shm/" + name
    with open(path, "w") as f:
        f.write("someone else's")
    r = subprocess.run(
        [sys.executable, "-m", "shmipc", "rm", name], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 1 and "not a shmipc object" in r.stderr
    assert os.path.exists(path)
    r = subprocess.run(
        [sys.executable, "-m", "shmipc", "rm", "--force", name],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and not os.path.exists(path)
