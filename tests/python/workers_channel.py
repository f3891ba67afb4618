"""Child-process bodies for test_channel.py (importable, so the spawn context can run them).

Every wait is bounded by a timeout; results travel back through a multiprocessing queue or
the exit code.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import numpy as np

import shmipc


def payload(i: int) -> bytes:
    """Message i of a fuzz stream: length 0..299 and content derived from i."""
    n = (i * 7919) % 300
    return (i.to_bytes(8, "little") * (n // 8 + 1))[:n]


def fuzz_sender(heap: shmipc.Heap, name: str, count: int, seed: int) -> None:
    """Sends payload(0..count-1) mixing send, send of a Block, send_many and send_array."""
    import random

    rnd = random.Random(seed)
    ch = heap.channel(name)
    ch.spin = rnd.choice([0.0, 20e-6, 1e-3])
    i = 0
    while i < count:
        how = rnd.randrange(4)
        if how == 0:
            ch.send(payload(i), timeout=60)
            i += 1
        elif how == 1:
            p = payload(i)
            blk = heap.allocate(max(len(p), 1))
            memoryview(blk)[: len(p)] = p
            if len(p) == len(blk):
                ch.send(blk, timeout=60)
            else:
                ch.send(p, timeout=60)
                blk.release()
            i += 1
        elif how == 2:
            k = min(rnd.randrange(1, 50), count - i)
            sent = ch.send_many([payload(j) for j in range(i, i + k)], timeout=60)
            assert sent == k
            i += k
        else:
            ch.send_array(np.frombuffer(payload(i), dtype=np.uint8), timeout=60)
            i += 1
    ch.close()


def echo(heap: shmipc.Heap, name_in: str, name_out: str, count: int, spin: float) -> None:
    """Receives `count` records and sends each back (the ping-pong peer)."""
    rx = heap.channel(name_in)
    tx = heap.channel(name_out)
    rx.spin = spin
    tx.spin = spin
    for _ in range(count):
        tx.send(rx.recv_bytes(timeout=60), timeout=60)
    tx.close()


def try_send(heap: shmipc.Heap, name: str, q: Any) -> None:
    """Reports what a send on `name` raises in this process ("ok" or the exception's name)."""
    ch = heap.channel(name)
    try:
        ch.send(b"from the child", timeout=5)
        q.put("ok")
    except Exception as e:  # noqa: BLE001 - the test wants the type
        q.put(type(e).__name__)
    finally:
        ch.close()


def try_recv(heap: shmipc.Heap, name: str, q: Any) -> None:
    """Reports what a recv on `name` raises in this process (or the bytes received)."""
    ch = heap.channel(name)
    try:
        q.put(ch.recv_bytes(timeout=5))
    except Exception as e:  # noqa: BLE001
        q.put(type(e).__name__)


def send_then_hang(heap: shmipc.Heap, name: str, count: int, q: Any) -> None:
    """Sends `count` records, says so, then waits to be killed (holding the sender role)."""
    ch = heap.channel(name)
    for i in range(count):
        ch.send(payload(i), timeout=30)
    q.put("sent")
    time.sleep(60)


def take_then_hang(heap: shmipc.Heap, name: str, count: int, q: Any) -> None:
    """Receives `count` records and keeps their Blocks (and an array view), then waits to be
    killed holding them."""
    ch = heap.channel(name)
    kept = [ch.recv(timeout=30) for _ in range(count - 1)]
    kept.append(ch.recv_array(timeout=30))  # type: ignore[arg-type]
    q.put(sum(len(b) for b in kept))
    time.sleep(60)


def recv_array_and_report(heap: shmipc.Heap, name: str, q: Any) -> None:
    """Receives one array and reports (dtype, shape, sum, offset of its block)."""
    ch = heap.channel(name)
    a = ch.recv_array(timeout=30)
    q.put((str(a.dtype), a.shape, float(a.sum()), bool(a.flags.writeable)))


def recv_from_pickled_channel(ch: shmipc.Channel, q: Any) -> None:
    """Receives from a Channel object that travelled as an argument."""
    q.put(ch.recv_bytes(timeout=30))
    ch.close()


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
