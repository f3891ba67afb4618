"""Hostile scribbles (issue 10 item 7, and the live-scribble fuzzer of item 13): a process
writes seeded random bytes over a named object's memory while an honest process uses it with
bounded waits. The honest process may get any Python exception (CorruptSegmentError mostly),
but never dies of a signal and never outlives its hang budget."""

from __future__ import annotations

import mmap
import os
import random
import time
from typing import Any

import pytest

import shmipc

import workers_hostile as W

SECONDS = 4.0
HANG_BUDGET = 120.0


def _make(kind: str, name: str) -> Any:
    if kind == "value":
        return shmipc.SharedValue.create(name, 4096)
    if kind == "queue":
        return shmipc.MessageQueue.create(name, maxsize=16, max_message_size=64)
    h = shmipc.Heap.create(name, 1 << 20)
    h.channel("c", capacity=16)
    h.dict("d")
    return h


def _scribble(name: str, rng: random.Random, until: float, targeted: bool) -> int:
    """Writes random bytes into the object's file through a mapping of our own until `until`."""
    fd = os.open("/dev/shm/" + name, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        with mmap.mmap(fd, size) as m:
            n = 0
            while time.monotonic() < until:
                # Targeted: the header and control blocks (the first 64 KiB), where counters,
                # geometry, locks and directory entries live; else anywhere.
                limit = min(size, 64 << 10) if targeted else size
                off = rng.randrange(0, limit - 8)
                width = rng.choice((1, 4, 8))
                m[off : off + width] = rng.randbytes(width)
                n += 1
                if n % 64 == 0:
                    time.sleep(0.001)  # let the honest process run
            return n
    finally:
        os.close(fd)


@pytest.mark.parametrize("targeted", [True, False], ids=["control", "anywhere"])
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("kind", ["value", "queue", "heap"])
def test_an_honest_user_survives_a_scribbler(
    name: str, spawn: Any, kind: str, seed: int, targeted: bool
) -> None:
    obj = _make(kind, name)
    out = spawn.Queue()
    p = spawn.Process(target=W.honest_user, args=(kind, name, SECONDS, out))
    p.start()
    try:
        time.sleep(0.3)  # let it attach to a sane object first (attach is fuzzed elsewhere)
        writes = _scribble(name, random.Random(seed), time.monotonic() + SECONDS, targeted)
        p.join(HANG_BUDGET)
        assert not p.is_alive(), "the honest process hung"
        assert p.exitcode == 0, f"the honest process died: exit code {p.exitcode}"
        report = out.get(timeout=10)
        assert report["ops"] > 0 and writes > 0
    finally:
        if p.is_alive():
            p.kill()
            p.join(10)
        try:
            obj.close()
        except Exception:  # noqa: BLE001 -- the scribbled object may refuse a clean close
            pass
        try:
            shmipc.unlink(name)
        except FileNotFoundError:
            pass
        for e in os.listdir("/dev/shm"):
            if e.startswith(name + "."):
                os.unlink("/dev/shm/" + e)
