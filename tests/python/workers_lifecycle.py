"""Workers for test_channel_lifecycle.py (spawned processes need importable functions)."""

from __future__ import annotations

import sys
from typing import Any

import shmipc


def send_and_return(heap: shmipc.Heap, name: str, count: int) -> None:
    """Sends `count` records and returns without close(): the process just exits."""
    ch = heap.channel(name)
    for i in range(count):
        ch.send(b"m%d" % i, timeout=30)


def send_and_raise(heap: shmipc.Heap, name: str, count: int) -> None:
    """Sends, then dies of an uncaught exception (the handle is never closed)."""
    ch = heap.channel(name)
    for i in range(count):
        ch.send(b"m%d" % i, timeout=30)
    sys.stderr.write("raising on purpose\n")
    raise RuntimeError("the producer failed")


def send_in_with_then_raise(heap: shmipc.Heap, name: str, count: int) -> None:
    """Sends inside `with heap.channel(...)`, then an exception leaves the block."""
    try:
        with heap.channel(name) as ch:
            for i in range(count):
                ch.send(b"m%d" % i, timeout=30)
            raise RuntimeError("failed mid-stream")
    except RuntimeError:
        pass


def recv_some_and_exit(heap: shmipc.Heap, name: str, count: int, q: Any) -> None:
    """Receives `count` records, reports, and exits without closing its handle."""
    ch = heap.channel(name)
    for _ in range(count):
        ch.recv(timeout=30).release()
    q.put("received")
