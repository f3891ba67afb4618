"""Worker functions for tests/python/test_heap.py (importable, for the spawn context)."""

from __future__ import annotations

import os
import random
import signal
import time
from typing import Any

import shmipc


def read_block(name: str, offset: int, nbytes: int, q: Any) -> None:
    """Attaches by name and sends back the bytes at `offset` (a block allocated by the parent)."""
    with shmipc.Heap.attach(name) as heap:
        blk = heap._adopt(offset, nbytes)
        q.put(bytes(blk))
        blk._detach()  # the parent owns it


def use_passed_heap(heap: shmipc.Heap | None, q: Any, q_in: Any = None) -> None:
    """Gets a heap as an argument or through a queue (by name or by fd) and writes into it."""
    if heap is None:
        heap = q_in.get(timeout=30)
    assert heap is not None
    blk = heap.allocate(32)  # a private block works too
    blk.release()
    with heap.shared_block("handoff", 16) as rec:
        memoryview(rec)[:5] = b"child"
    q.put(("ok", heap.stats()["clients"]))
    heap.close()


def hold_blocks_until_killed(name: str, count: int, nbytes: int, ready: Any) -> None:
    heap = shmipc.Heap.attach(name)
    blocks = [heap.allocate(nbytes) for _ in range(count)]
    for b in blocks:
        memoryview(b)[:1] = b"x"
    ready.set()
    time.sleep(120)


def hammer_allocator(name: str, ready: Any) -> None:
    """Allocates and frees in a tight loop without caches, so every call takes the lock."""
    heap = shmipc.Heap.attach(name, thread_cache=False)
    rng = random.Random(os.getpid())
    live = []
    ready.set()
    while True:
        if len(live) < 64 and rng.random() < 0.6:
            live.append(heap.allocate(rng.randrange(1, 20000)))
        elif live:
            live.pop(rng.randrange(len(live))).release()


def die_holding_the_lock(name: str) -> None:
    heap = shmipc.Heap.attach(name, thread_cache=False)
    heap.allocate(1000)._detach()  # owned by us: must be reclaimed
    heap._lock_for_crash_test()
    os.kill(os.getpid(), signal.SIGKILL)


def fuzz(name: str | None, heap: shmipc.Heap | None, seed: int, rounds: int, q: Any) -> None:
    """Random allocate/free with a byte pattern per block; reports corruption."""
    h = heap if heap is not None else shmipc.Heap.attach(name)  # type: ignore[arg-type]
    rng = random.Random(seed)
    live: list[tuple[shmipc.Block, int]] = []
    errors = 0
    for _ in range(rounds):
        if len(live) < 100 and (not live or rng.random() < 0.55):
            n = rng.choice([1, 8, 64, 100, 1000, 4000, rng.randrange(1, 70000)])
            try:
                b = h.allocate(n)
            except MemoryError:
                continue
            v = rng.randrange(256)
            mv = memoryview(b)
            mv[0] = v
            mv[n - 1] = v
            mv.release()
            live.append((b, v))
        else:
            b, v = live.pop(rng.randrange(len(live)))
            with memoryview(b) as mv:
                if mv[0] != v or mv[b.nbytes - 1] != v:
                    errors += 1
            b.release()
    for b, _ in live:
        b.release()
    q.put(errors)
    h.close()


def shared_block_user(name: str, q: Any) -> None:
    """Races for the shared block; init runs in exactly one process."""
    heap = shmipc.Heap.attach(name)
    ran = []

    def init(blk: shmipc.Block) -> None:
        ran.append(1)
        time.sleep(0.3)  # others must wait for us
        memoryview(blk).cast("q")[0] = os.getpid()

    blk = heap.shared_block("state", 64, init)
    with memoryview(blk).cast("q") as v:
        q.put((len(ran), v[0]))
    blk.release()
    heap.close()


def die_in_init(name: str) -> None:
    heap = shmipc.Heap.attach(name)

    def init(blk: shmipc.Block) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    heap.shared_block("doomed", 64, init)


def create_and_get_killed(name: str, ready: Any) -> None:
    heap = shmipc.Heap.create(name, size=1 << 20)
    heap.allocate(100)._detach()
    ready.set()
    time.sleep(120)


def read_after_growth(name: str, q_in: Any, q_out: Any) -> None:
    """Attached before the heap grows; maps the new segment when it meets an offset in it."""
    heap = shmipc.Heap.attach(name)
    q_out.put(heap.stats()["segments"])
    offset, nbytes = q_in.get(timeout=30)
    blk = heap._adopt(offset, nbytes)
    q_out.put(bytes(memoryview(blk)[:4]))
    blk._detach()
    heap.close()


def fork_child_uses_inherited(heap: shmipc.Heap, q: Any) -> None:
    b = heap.allocate(100)
    q.put(heap.stats()["clients"])
    b.release()


def fork_child_releases_inherited(blk: shmipc.Block, q: Any) -> None:
    blk.release()  # inherited from the parent: must not free the parent's block
    q.put("released")


def slow_creator(name: str, in_init: Any) -> None:
    heap = shmipc.Heap.attach(name)

    def init(blk: shmipc.Block) -> None:
        in_init.set()
        time.sleep(60)

    heap.shared_block("slow", 8, init)


def interruptible_waiter(name: str, q: Any) -> None:
    heap = shmipc.Heap.attach(name)
    q.put("waiting")
    try:
        heap.shared_block("slow", 8, timeout=60)
        q.put("returned")
    except KeyboardInterrupt:
        q.put("interrupted")


def cache_then_hold(name: str, ready: Any) -> None:
    """Fills its thread caches (freed small blocks) and holds big ones, then waits for SIGKILL."""
    heap = shmipc.Heap.attach(name)
    small = [heap.allocate(64 * (1 + i % 8)) for i in range(200)]
    for b in small:
        b.release()  # parked in this process's caches
    held = [heap.allocate(30000) for _ in range(20)]
    assert heap.stats()["cached"] > 0
    ready.set()
    time.sleep(120)
    del held
