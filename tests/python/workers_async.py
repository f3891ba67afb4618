"""Child-process bodies for test_async.py and test_wait.py (importable for spawn).

Every wait is bounded; results travel back through a multiprocessing queue or the exit code.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import time
from typing import Any

import shmipc


def sender(heap: shmipc.Heap, name: str, count: int, pause: float = 0.0, seed: int = 0) -> None:
    """Sends i.to_bytes(4) for i in range(count), pausing up to `pause` s now and then."""
    rnd = random.Random(seed)
    ch = heap.channel(name)
    for i in range(count):
        ch.send(i.to_bytes(4, "little"), timeout=60)
        if pause and rnd.random() < 0.2:
            time.sleep(rnd.random() * pause)
    ch.close()


def sender_then_die(heap: shmipc.Heap, name: str, count: int) -> None:
    ch = heap.channel(name)
    for i in range(count):
        ch.send(i.to_bytes(4, "little"), timeout=60)
    os._exit(0)  # no close: the receiver gets PeerDiedError once drained


def slow_receiver(heap: shmipc.Heap, name: str, count: int, out: Any) -> None:
    ch = heap.channel(name)
    got = []
    for _ in range(count):
        got.append(int.from_bytes(bytes(ch.recv(timeout=60)), "little"))
        if len(got) % 16 == 0:
            time.sleep(0.005)
    out.put(got)


def async_consumer(heap: shmipc.Heap, name: str, count: int, out: Any, loop: str) -> None:
    """Receives `count` records with arecv under asyncio or uvloop; reports (mode, values)."""
    ch = heap.channel(name)

    async def main() -> list[int]:
        got = []
        async for blk in ch:
            got.append(int.from_bytes(bytes(blk), "little"))
        return got

    if loop == "uvloop":
        import uvloop

        got = uvloop.run(main())
    else:
        got = asyncio.run(main())
    out.put((shmipc.reactor_info()["mode"], got))


def lag_ticks_then_send(heap: shmipc.Heap, names: list[str], ticks: Any, need: int) -> None:
    """Waits until the consumer's ticker counted `need` ticks (its loop runs), then sends one
    record to every channel."""
    v = shmipc.SharedValue.attach(ticks)
    deadline = time.monotonic() + 60
    while v.version < need and time.monotonic() < deadline:
        try:
            v.wait(timeout=0.5)
        except TimeoutError:
            pass
    chans = [heap.channel(n) for n in names]
    for i, ch in enumerate(chans):
        ch.send(i.to_bytes(4, "little"), timeout=60)
    for ch in chans:
        ch.close()
    v.close()


def queue_producer(name: str, count: int, pause: float = 0.0) -> None:
    q = shmipc.MessageQueue.attach(name)
    rnd = random.Random(1)
    for i in range(count):
        q.put(i, timeout=60)
        if pause and rnd.random() < 0.2:
            time.sleep(rnd.random() * pause)
    q.close()


def queue_consumer(name: str, count: int, out: Any) -> None:
    q = shmipc.MessageQueue.attach(name)
    out.put([q.get(timeout=60) for _ in range(count)])
    q.close()


def value_writer(name: str, count: int, pause: float) -> None:
    v = shmipc.SharedValue.attach(name)
    for i in range(count):
        v.write(f"value {i}")
        time.sleep(pause)
    v.close()


def socket_sender(path: str, count: int) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    for i in range(count):
        time.sleep(0.01)
        shmipc.send(s, shmipc.Buffer.from_bytes(i.to_bytes(4, "little")))
    s.close()


def socket_array_sender(path: str) -> None:
    import numpy as np

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    time.sleep(0.05)
    shmipc.send_array(s, np.arange(12, dtype=np.int32).reshape(3, 4))
    s.close()


def receiver_then_die(heap: shmipc.Heap, name: str, ready: Any) -> None:
    ch = heap.channel(name)
    try:
        ch.recv(timeout=0.01)  # claims the receiver role
    except TimeoutError:
        pass
    ready.put("claimed")
    time.sleep(0.3)
    os._exit(0)  # no close: the sender gets PeerDiedError


def send_to_some(heap: shmipc.Heap, names: list[str], picks: list[int], delay: float) -> None:
    time.sleep(delay)
    for i in picks:
        ch = heap.channel(names[i])
        ch.send(i.to_bytes(4, "little"), timeout=60)
        ch.close()  # end of stream: the receiver gets EOFError once it took the record


def wait_in_child(heap: shmipc.Heap, names: list[str], out: Any) -> None:
    """shmipc.wait over channels in this (spawned) process; reports (mode, indices)."""
    chans = [heap.channel(n) for n in names]
    ready = shmipc.wait(chans, timeout=30)
    out.put((shmipc.reactor_info()["mode"], [chans.index(c) for c in ready]))


def topic_publisher(heap: shmipc.Heap, name: str, count: int, subs: int, die: bool) -> None:
    """Publishes `count` little-endian ints once `subs` subscribers are there, then closes
    (or dies without closing)."""
    pub = heap.publisher(name, capacity=64)
    deadline = time.monotonic() + 60
    while pub.subscribers < subs and time.monotonic() < deadline:
        time.sleep(0.005)
    for i in range(count):
        pub.publish(i.to_bytes(4, "little"), timeout=60)
        if i % 97 == 0:
            time.sleep(0.002)
    if die:
        os.kill(os.getpid(), signal.SIGKILL)
    pub.close()
