"""Participants of the torture suite: each runs until it is SIGKILLed (forkserver children)."""

from __future__ import annotations

import os
import socket
import struct
import time
from typing import Any

import numpy as np

import shmipc


def _ready(conn: Any) -> None:
    conn.send("ready")


def heap_churn(heap_name: str, seed: int, *, conn: Any) -> None:
    rng = np.random.default_rng(seed)
    with shmipc.Heap.attach(heap_name) as heap:
        held: list[Any] = []
        _ready(conn)
        while True:
            if len(held) < 64 and rng.random() < 0.6:
                size = int(rng.choice([16, 64, 200, 4096, 70_000]))
                held.append(heap.allocate(size))
            elif held:
                held.pop(int(rng.integers(len(held)))).release()


def channel_sender(heap: Any, name: str, *, conn: Any) -> None:
    ch = heap.channel(name, capacity=64)
    ch.send(struct.pack("<q", 0))  # claims the sender role before we can be killed
    _ready(conn)
    i = 1
    while True:
        ch.send(struct.pack("<q", i))
        i += 1


def channel_receiver(heap: Any, name: str, *, conn: Any) -> None:
    ch = heap.channel(name, capacity=64)
    try:
        ch.recv(timeout=0).release()  # claims the receiver role before we can be killed
    except TimeoutError:
        pass
    _ready(conn)
    while True:
        ch.recv().release()


def topic_publisher(heap: Any, name: str, *, conn: Any) -> None:
    """Publishes 0, 1, 2... (bytes and zero-copy Blocks) until killed."""
    pub = heap.publisher(name, capacity=16, history=2)
    pub.publish(struct.pack("<q", 0))
    _ready(conn)
    i = 1
    while True:
        if i % 2:
            blk = heap.allocate(8 + (i % 700), timeout=10)
            memoryview(blk)[:8] = struct.pack("<q", i)
            pub.publish(blk, timeout=10)
        else:
            pub.publish(struct.pack("<q", i), timeout=10)
        i += 1


def topic_subscriber(heap: Any, name: str, seed: int, *, conn: Any) -> None:
    """Receives and holds a random number of samples until killed."""
    rng = np.random.default_rng(seed)
    sub = heap.subscriber(name)
    _ready(conn)
    held = []
    while True:
        held.append(sub.recv(timeout=30))
        while len(held) > int(rng.integers(6)):
            held.pop(int(rng.integers(len(held)))).release()


def value_writer(name: str, start: int, *, conn: Any) -> None:
    v = shmipc.SharedValue.attach(name)
    _ready(conn)
    i = start
    while True:
        v.write(np.full(4096, i, dtype=np.int64))
        i += 1


def queue_producer(name: str, committed: Any, *, conn: Any) -> None:
    q = shmipc.MessageQueue.attach(name)
    _ready(conn)
    i = 0
    while True:
        q.put_bytes(struct.pack("<q", i))
        i += 1
        committed.value = i  # every put that returned is committed


def queue_consumer(name: str, taken: Any, ntaken: Any, *, conn: Any) -> None:
    q = shmipc.MessageQueue.attach(name)
    _ready(conn)
    while True:
        (i,) = struct.unpack("<q", q.get_bytes())
        taken[ntaken.value] = i  # returned to us: it may be lost if we die before this
        ntaken.value += 1


def stream_owner(name: str, *, conn: Any) -> None:
    f = shmipc.open_stream(name, "w+b", owner=True)
    _ready(conn)
    while True:
        f.write(b"x" * 4096)
        f.seek(0)


def buffer_sender(sock: socket.socket, *, conn: Any) -> None:
    _ready(conn)
    i = 0
    while True:
        b = shmipc.Buffer(4096 + (i % 7) * 4096)
        memoryview(b)[:8] = struct.pack("<q", i)
        shmipc.send(sock, b, meta={"i": i})
        i += 1


def dict_writer(heap_name: str, dname: str, seed: int, *, conn: Any) -> None:
    rng = np.random.default_rng(seed)
    with shmipc.Heap.attach(heap_name) as heap:
        d = heap.dict(dname)
        _ready(conn)
        while True:
            k = f"k{int(rng.integers(32))}"
            n = int(rng.integers(1, 200))
            if rng.random() < 0.2:
                d.pop(k, None)
            else:
                d[k] = np.full(n, n, dtype=np.int32)


def spin_forever() -> None:
    while True:
        time.sleep(1)


def pid() -> int:
    return os.getpid()
