"""Fuzz attach of named segments with corrupted headers and control blocks (atheris).

Each input picks a kind (heap, value, queue), starts from the bytes of a valid object of that
kind, applies byte patches in its first 64 KiB and may truncate or extend the file, writes it
under a fresh name in /dev/shm and attaches. Attach must answer with a documented exception
(CorruptSegmentError, ValueError, OSError, MemoryError) or give a usable object, never crash.

    python fuzz/fuzz_segments.py -runs=5000 -timeout=10     # smoke run (CI)
"""

from __future__ import annotations

import os
import sys

import atheris

import shmipc

atheris.instrument_all()

EXPECTED = (
    shmipc.CorruptSegmentError,
    ValueError,
    OSError,
    MemoryError,
    TimeoutError,
    EOFError,
    KeyError,
    BufferError,
    shmipc.ShmipcError,
)
PREFIX = f"shmipc-fuzz-{os.getpid()}"


def _template(kind: str) -> bytes:
    name = f"{PREFIX}-tmpl-{kind}"
    if kind == "heap":
        # A populated heap: blocks, a channel with records in flight, a dict, a topic with a
        # subscriber, so the fuzzer patches real directory entries, rings and tables.
        obj = shmipc.Heap.create(name, size=256 << 10)
        keep = [obj.allocate(n) for n in (64, 1000, 5000)]
        tx = obj.channel("c", capacity=8)
        tx.send(b"in flight")
        tx.send(b"y" * 300)
        obj.dict("d")["k"] = b"v"
        pub = obj.publisher("t", capacity=4, history=1)
        sub = obj.subscriber("t")
        pub.publish(b"sample")
        with open(f"/dev/shm/{name}", "rb") as f:
            data = f.read()
        for b in keep:
            b.release()
        sub.close()
        pub.close()
        tx.close()
        obj.close()
        return data
    elif kind == "value":
        obj = shmipc.SharedValue.create(name, size=4096)
        obj.write("hello")
    else:
        obj = shmipc.MessageQueue.create(name, maxsize=4, max_message_size=64)
        obj.put_bytes(b"x")
    with open(f"/dev/shm/{name}", "rb") as f:
        data = f.read()
    obj.close()
    return data


KINDS = ["heap", "value", "queue"]
TEMPLATES = {k: _template(k) for k in KINDS}


def _attach(kind: str, name: str) -> None:
    if kind == "heap":
        with shmipc.Heap.attach(name) as h:
            h.stats()
            h.channels()
            h.topics()
            rx = h.channel("c", capacity=8)
            try:
                rx.recv_bytes(timeout=0)
            finally:
                rx.close()
            h.dict("d", timeout=0.1).get("k")
            h.allocate(100, timeout=0).release()
    elif kind == "value":
        with shmipc.SharedValue.attach(name) as v:
            v.read()
    else:
        with shmipc.MessageQueue.attach(name) as q:
            q.qsize()


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    kind = KINDS[fdp.ConsumeIntInRange(0, len(KINDS) - 1)]
    buf = bytearray(TEMPLATES[kind])
    for _ in range(fdp.ConsumeIntInRange(0, 16)):
        # mostly the header and control block, where attach must not trust anything
        limit = 64 if fdp.ConsumeBool() else min(len(buf), 64 << 10)
        off = fdp.ConsumeIntInRange(0, limit - 1)
        buf[off] = fdp.ConsumeInt(1) & 0xFF
    cut = fdp.ConsumeIntInRange(0, 3)
    if cut == 1:
        del buf[fdp.ConsumeIntInRange(0, len(buf)) :]
    elif cut == 2:
        buf += bytes(fdp.ConsumeIntInRange(1, 8192))
    name = f"{PREFIX}-x"
    path = f"/dev/shm/{name}"
    with open(path, "wb") as f:
        f.write(buf)
    try:
        _attach(kind, name)
    except EXPECTED:
        pass
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
