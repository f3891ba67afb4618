"""Process bodies for test_queue.py (importable, for the spawn context)."""

from __future__ import annotations

import os
import pickle
import queue
import struct
import time
from typing import Any

import shmipc

RECORD = struct.Struct("<ii")  # (producer generation, sequence number)


def produce(name: str, tag: int, count: int) -> None:
    """Puts (tag, i) for i in range(count)."""
    with shmipc.MessageQueue.attach(name) as q:
        for i in range(count):
            q.put((tag, i), timeout=60)


def consume_until_sentinel(name: str, out_path: str) -> None:
    """Gets objects until None; writes the list of what it got to out_path (pickle)."""
    got: list[Any] = []
    with shmipc.MessageQueue.attach(name) as q:
        while True:
            item = q.get(timeout=60)
            if item is None:
                break
            got.append(item)
    with open(out_path, "wb") as f:
        pickle.dump(got, f)


def put_then_report(q: shmipc.MessageQueue, result: Any) -> None:
    """Receives the queue as an argument (it travels by name), puts into it and reports."""
    q.put(("child", os.getpid()))
    result.put(q.name)
    q.close()


def crash_at(name: str, point: int, action: str, payload: bytes) -> None:
    """SIGKILLs itself at an engine crash point while putting or getting."""
    q = shmipc.MessageQueue.attach(name)
    names = {
        1: "queue.put.claimed",
        2: "queue.put.half",
        3: "queue.get.claimed",
        4: "queue.get.copied",
    }
    shmipc._core._arm_crash_point(names[point], 1)
    if action == "put":
        q.put_bytes(payload, timeout=10)
    else:
        q.get_bytes(timeout=10)
    raise SystemExit(3)  # the crash point was not reached


# ---- SIGKILL torture ------------------------------------------------------------------------


# Victims share only lock-free memory with the test (RawArray): a process SIGKILLed while
# holding the lock of a multiprocessing.Event would hang everybody else, which is exactly the
# failure the queue must not have.


def torture_producer(
    name: str, gen: int, progress: Any, ready: Any, worker: int, stop: Any, payload_size: int
) -> None:
    """Puts (gen, seq) records padded to payload_size until stop[0] (or killed).

    progress[gen] = number of puts that returned, i.e. committed messages 0..progress-1.
    """
    pad = b"p" * max(0, payload_size - RECORD.size)
    with shmipc.MessageQueue.attach(name) as q:
        ready[worker] = 1
        seq = 0
        while not stop[0]:
            try:
                q.put_bytes(RECORD.pack(gen, seq) + pad, timeout=0.2)
            except queue.Full:
                continue
            seq += 1
            progress[gen] = seq


def torture_consumer(name: str, log_path: str, ready: Any, worker: int, stop: Any) -> None:
    """Gets messages until stopped (or killed), appending each record to log_path right after
    get returns (one write(2) per message)."""
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with shmipc.MessageQueue.attach(name) as q:
        ready[worker] = 1
        while not stop[0]:
            try:
                msg = q.get_bytes(timeout=0.2)
            except queue.Empty:
                continue
            os.write(fd, msg[: RECORD.size])
    os.close(fd)


def create_and_wait(name: str, ready: Any) -> None:
    """Creates the queue and waits to be killed (leaving a stale name behind)."""
    q = shmipc.MessageQueue.create(name, maxsize=2, max_message_size=64)
    ready.set()
    time.sleep(120)
    q.close()


def put_from_inherited(q: shmipc.MessageQueue) -> None:
    """fork child: uses the handle it inherited, then closes it (must not remove the name)."""
    q.put(("forked", os.getpid()))
    q.close()
