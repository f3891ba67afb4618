"""Child-process bodies for test_topic.py (importable, so the spawn context can run them).

Every wait is bounded by a timeout; results travel back through a multiprocessing queue or the
exit code.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import shmipc


def payload(i: int) -> bytes:
    """Sample i of a fuzz stream: length 8..307, its first 8 bytes are i."""
    n = 8 + (i * 7919) % 300
    return (i.to_bytes(8, "little") * (n // 8 + 1))[:n]


def subscribe_and_collect(heap: shmipc.Heap, name: str, out: Any, ready: Any) -> None:
    """Subscribes, says so, then receives until the end of the stream; reports the payloads."""
    sub = heap.subscriber(name)
    ready.put(os.getpid())
    got = []
    try:
        for s in sub:
            got.append(bytes(s))
            s.release()
    except shmipc.PeerDiedError:
        got.append(b"<peer died>")
    out.put((os.getpid(), got, sub.missed))


def hold_and_wait(heap: shmipc.Heap, name: str, ready: Any, hold: int) -> None:
    """Receives `hold` samples, keeps them, says so, then sleeps until killed."""
    sub = heap.subscriber(name)
    ready.put("subscribed")
    kept = [sub.recv(timeout=30) for _ in range(hold)]
    ready.put(len(kept))
    time.sleep(120)


def fuzz_subscriber(heap: shmipc.Heap, name: str, seed: int, out: Any, ready: Any) -> None:
    """Checks order, uniqueness and content; holds a random number of samples; may die."""
    rnd = random.Random(seed)
    sub = heap.subscriber(name)
    ready.put(os.getpid())
    kept: list[Any] = []
    last = -1
    n = 0
    errors = 0
    try:
        while True:
            a = sub.recv(timeout=30)
            seq = int.from_bytes(bytes(a)[:8].ljust(8, b"\0"), "little")
            if bytes(a) != payload(seq) or seq <= last:
                errors += 1
            last = seq
            n += 1
            kept.append(a)
            while len(kept) > rnd.randrange(5):
                kept.pop(rnd.randrange(len(kept))).release()
    except EOFError:
        pass
    out.put((os.getpid(), n, errors, sub.missed))


def publish_forever(heap: shmipc.Heap, name: str, ready: Any) -> None:
    """Publishes payload(i) as Blocks (zero copy) until killed."""
    pub = heap.publisher(name, capacity=4, history=2)
    ready.put("publishing")
    i = 0
    while True:
        p = payload(i)
        blk = heap.allocate(len(p))
        memoryview(blk)[:] = p
        pub.publish(blk, timeout=30)
        i += 1


def subscriber_from_pickle(sub: shmipc.Subscriber, out: Any) -> None:
    """A Subscriber that came by pickling: it subscribes anew in this process."""
    out.put("ready")
    out.put(sub.recv_bytes(timeout=30))
