"""Workers of test_objects.py and test_ndarray.py (importable, for the spawn start method)."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

import shmipc


def big_dict(seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "img": rng.integers(0, 255, (512, 512, 3), dtype=np.uint8),
        "f": rng.random(100_000),
        "raw": bytes(range(256)) * 1024,
        "meta": {"seed": seed, "name": "frame"},
    }


def put_dicts(name: str, seeds: list[int]) -> None:
    """Puts big_dict(seed) for each seed, then exits (its blocks must outlive it)."""
    with shmipc.MessageQueue.attach(name) as q:
        for s in seeds:
            q.put(big_dict(s), timeout=30)


def get_and_hold(name: str, ready: Any) -> None:
    """Gets one object, keeps its arrays, signals, and waits to be killed."""
    with shmipc.MessageQueue.attach(name) as q:
        obj = q.get(timeout=30)
        assert obj["f"].sum() > 0
        ready.set()
        time.sleep(60)


def channel_send_objs(heap: shmipc.Heap, seeds: list[int]) -> None:
    with heap.channel("objs") as ch:
        for s in seeds:
            ch.send_obj(big_dict(s), timeout=30)


def channel_recv_and_hold(heap: shmipc.Heap, ready: Any) -> None:
    ch = heap.channel("held")
    obj = ch.recv_obj(timeout=30)
    assert obj["f"].sum() > 0
    ready.set()
    time.sleep(60)


# --- shmipc.ndarray -------------------------------------------------------------------------


def add_one(a: np.ndarray) -> float:
    """Adds 1 in place (a view of the parent's memory) and returns the new sum."""
    a += 1
    return float(a.sum())


def describe(a: Any) -> tuple[str, bool, int]:
    """The type the worker got, whether it views shared memory, and how many memfds this
    process maps for shmipc.ndarrays."""
    from shmipc import _ndarray

    return type(a).__name__, bool(a.shared), len(_ndarray._mappings)


def mappings_after(slices: list[np.ndarray]) -> int:
    from shmipc import _ndarray

    for s in slices:
        s[...] = 7
    return len(_ndarray._mappings)


def fill_from_queue(q: Any, done: Any) -> None:
    """Gets an array from a multiprocessing Queue, fills it with its position, reports."""
    a = q.get(timeout=30)
    a[...] = np.arange(a.size).reshape(a.shape)
    done.put(os.getpid())


def pipe_echo(conn: Any) -> None:
    """Receives an array over a Pipe, writes 5 into it, sends back a slice of it."""
    a = conn.recv()
    a[...] = 5
    conn.send(a[1:3])
    conn.recv()  # the parent says when to stop


def hold_then_write(conn: Any) -> None:
    """Receives an array, waits until the parent dropped its own, then writes into ours."""
    a = conn.recv()
    conn.send("got")
    conn.recv()
    a[...] = 255
    conn.send("wrote")


def small_dict(tag: int, i: int) -> dict[str, Any]:
    return {"tag": tag, "i": i, "a": np.full(20_000, tag * 100_000 + i, dtype=np.int64)}


def put_small_dicts(name: str, tag: int, count: int) -> None:
    with shmipc.MessageQueue.attach(name) as q:
        for i in range(count):
            q.put(small_dict(tag, i), timeout=60)


def get_and_check_until_none(name: str, out: Any) -> None:
    """Gets dicts until None, checks each array against its (tag, i), reports the pairs."""
    got = []
    with shmipc.MessageQueue.attach(name) as q:
        while True:
            d = q.get(timeout=60)
            if d is None:
                break
            assert (d["a"] == d["tag"] * 100_000 + d["i"]).all()
            got.append((d["tag"], d["i"]))
            del d
    out.put(got)


def produce_in_the_queue_heap(name: str, count: int, out: Any, ack: Any) -> None:
    """Produces `count` arrays in place in blocks of the queue's companion heap and puts each
    (the block moves, no copy); reports (allocations after producing, after putting), then
    waits for `ack` (the parent has freed that message) so no free falls between two counts."""
    with shmipc.MessageQueue.attach(name) as q:
        heap = q.oob_heap
        assert heap is not None
        for i in range(count):
            a = heap.allocate(1 << 20).as_array(np.float64)
            a[:] = i  # produced in place
            before = heap.stats()["allocations"]
            q.put({"i": i, "a": a}, timeout=30)
            assert not a.flags.writeable  # the message's memory now
            out.put((before, heap.stats()["allocations"]))
            ack.get(timeout=60)
