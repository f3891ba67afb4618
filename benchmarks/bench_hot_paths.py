"""Hot-path cost per operation in one process (queue, channel, heap, value): run it with two
installed builds to compare them (benchmarks/RESULTS.md, "Hot-path cost").

    python benchmarks/bench_hot_paths.py
"""

from __future__ import annotations

import os
import time

import shmipc


def best(f, n, reps=7):
    b = 1e9
    for _ in range(reps):
        t = time.perf_counter()
        f(n)
        b = min(b, (time.perf_counter() - t) / n)
    return b * 1e9


name = f"hot{os.getpid()}"
q = shmipc.MessageQueue.create(name, maxsize=64, max_message_size=64)
msg = b"x" * 64


def qloop(n):
    p, g = q.put_bytes, q.get_bytes
    for _ in range(n):
        p(msg)
        g()


h = shmipc.Heap.anonymous(16 << 20)
tx = h.channel("c", capacity=64)
rx = h.channel("c", capacity=64)


def cloop(n):
    s, r = tx.send, rx.recv_bytes
    for _ in range(n):
        s(msg)
        r()


def aloop(n):
    a = h.allocate
    for _ in range(n):
        a(64).release()


def aloop_big(n):
    a = h.allocate
    for _ in range(n):
        a(100000).release()


v = shmipc.SharedValue.create(name + "v", 4096)


def vloop(n):
    w, r = v.write, v.read
    for _ in range(n):
        w(msg)
        r()


for label, f in [
    ("queue put_bytes+get_bytes 64 B", qloop),
    ("channel send+recv_bytes 64 B", cloop),
    ("heap allocate+release 64 B (cache)", aloop),
    ("heap allocate+release 100 kB (lock)", aloop_big),
    ("value write+read 64 B", vloop),
]:
    print(f"{label:40s} {best(f, 20000):8.0f} ns")
q.close()
v.close()
tx.close()
rx.close()
h.close()
