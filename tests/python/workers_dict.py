"""Worker functions for tests/python/test_dict.py (importable, for the spawn context)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np

import shmipc


def value_for(key: str, version: int) -> Any:
    """A value that says which key it belongs to, so a torn or misplaced entry shows."""
    kid = int(key[1:])
    if version % 3 == 0:
        return np.full(version % 50 + 1, kid, dtype=np.int64)
    if version % 3 == 1:
        return f"{key}|{version}|" + "#" * (version % 300)
    return (f"{key}|{version}|".encode()) * (1 + version % 40)


def check_value(key: str, value: Any) -> None:
    kid = int(key[1:])
    if isinstance(value, np.ndarray):
        assert value.dtype == np.int64 and value.ndim == 1, (key, value)
        assert (value == kid).all(), (key, value)
        return
    if isinstance(value, str):
        version = int(value.split("|")[1])
        assert value == value_for(key, version), (key, value)
        return
    assert isinstance(value, bytes), (key, value)
    version = int(value.split(b"|")[1])
    assert value == value_for(key, version), (key, value)


def write_items(heap: shmipc.Heap, name: str, items: dict[str, Any], q: Any) -> None:
    """Stores `items` in the dict, then reports what it sees of the parent's entries."""
    d = heap.dict(name)
    for k, v in items.items():
        d[k] = v
    q.put(d.get("from-parent"))
    d.close()
    heap.close()


def read_all(d: shmipc.SharedDict, q: Any) -> None:
    """Gets the dict itself as an argument (it travels with its heap) and reports it."""
    q.put(d.copy())
    d["from-child"] = 1
    d.heap.close()


def disjoint_writer(heap_name: str, name: str, wid: int, n: int) -> None:
    """Sets n keys of its own and bumps a shared key's value (each set is atomic)."""
    with shmipc.Heap.attach(heap_name) as heap:
        d = heap.dict(name)
        for i in range(n):
            d[f"w{wid}-{i}"] = i
            d["shared"] = f"w{wid}-{i}"
        d.close()


def hammer(heap_name: str, name: str, seed: int, ready: Any) -> None:
    """Random sets, deletes, pops and clears on 64 keys, forever (the parent SIGKILLs it)."""
    heap = shmipc.Heap.attach(heap_name)
    d = heap.dict(name)
    d.timeout = 30
    rng = random.Random(seed)
    ready.set()
    version = 0
    while True:
        version += 1
        key = f"k{rng.randrange(64)}"
        r = rng.random()
        if r < 0.6:
            d[key] = value_for(key, version)
        elif r < 0.75:
            d.pop(key, None)
        elif r < 0.9:
            v = d.get(key)
            if v is not None:
                check_value(key, v)
        elif r < 0.999:
            for k, v in d.items():
                check_value(k, v)
        else:
            d.clear()


def hold_lock(heap_name: str, name: str, ready: Any, how: str) -> None:
    """Takes the dict's lock and then dies ("kill"), exits ("exit") or sleeps ("sleep")."""
    import os
    import signal
    import time

    heap = shmipc.Heap.attach(heap_name)
    d = heap.dict(name)
    d["holder"] = os.getpid()
    d._hold_lock_for_test()
    ready.set()
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "exit":
        os._exit(0)
    time.sleep(120)
