"""SIGKILL torture: for every object kind, kill a random participant at a random moment.

Asserts for every trial: no hang (every wait is bounded), no lost or duplicated committed
message, no torn value, heap space back to its baseline after reclamation; and at the end no
leaked /dev/shm name and no leaked fd. Trials per kind: --torture-trials (default 50;
SHMIPC_TORTURE_TRIALS=1000 for a long run).
"""

from __future__ import annotations

import gc
import os
import queue
import random
import signal
import socket
import struct
import time
from multiprocessing import forkserver
from typing import Any

import numpy as np
import pytest

import shmipc

import workers_stress as w


def _kill_at_random(
    ctx: Any, rng: random.Random, target: Any, *args: Any, window: float = 0.02, during: Any = None
) -> None:
    """Starts `target`, waits until it is ready, lets it run for a random part of `window`
    seconds (calling `during()` meanwhile), then SIGKILLs it."""
    parent, child = ctx.Pipe(duplex=False)
    p = ctx.Process(target=target, args=args, kwargs={"conn": child}, daemon=True)
    p.start()
    child.close()
    assert parent.poll(60), "participant never became ready"
    assert parent.recv() == "ready"
    deadline = time.monotonic() + rng.uniform(0, window)
    while time.monotonic() < deadline:
        if during is not None:
            during()
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    assert p.exitcode == -signal.SIGKILL, f"participant ended with {p.exitcode}"
    parent.close()


def _fd_count() -> int:
    # The forkserver (the ctx fixture) holds two pipes to this process from its start on: start
    # it before any count, or a test that happens to start it first finds them "leaked".
    forkserver.ensure_running()
    gc.collect()
    shmipc._core.clear_pool()
    return len(os.listdir("/proc/self/fd"))


# ------------------------------------------------------------------------------- heap
def test_heap_blocks_of_killed_processes_are_reclaimed(ctx: Any, trials: int, name: str) -> None:
    rng = random.Random(1)
    with shmipc.Heap.create(name, size=32 << 20) as heap:
        baseline = heap.stats()["used"]
        for t in range(trials):
            _kill_at_random(ctx, rng, w.heap_churn, name, t)
            st = heap.stats()  # reclaims the dead client's blocks
            assert st["used"] == baseline, f"trial {t}: {st}"
            heap._check_invariants()
        with heap.allocate(1 << 20) as blk:  # still fully usable
            memoryview(blk)[:4] = b"live"


# ------------------------------------------------------------------------------- channels
def test_channel_sender_killed_receiver_sees_an_ordered_prefix_then_peer_died(
    ctx: Any, trials: int
) -> None:
    rng = random.Random(2)
    with shmipc.Heap.anonymous(16 << 20) as heap:
        for t in range(trials):
            ch = heap.channel(f"c{t}", capacity=64)
            base = heap.stats()["used"]
            got: list[int] = []

            def drain(ch: Any = ch, got: list[int] = got) -> None:
                try:
                    blk = ch.recv(timeout=0)
                except TimeoutError:
                    return
                got.append(struct.unpack("<q", bytes(blk))[0])
                blk.release()

            _kill_at_random(ctx, rng, w.channel_sender, heap, f"c{t}", during=drain)
            with pytest.raises(shmipc.PeerDiedError):  # not TimeoutError
                while True:
                    blk = ch.recv(timeout=10)
                    got.append(struct.unpack("<q", bytes(blk))[0])
                    blk.release()
            assert got == list(range(len(got))), f"trial {t}: out of order or duplicated"
            ch.release()
            assert heap.stats()["used"] <= base, f"trial {t}: blocks not reclaimed"


def test_channel_receiver_killed_blocked_sender_gets_peer_died(ctx: Any, trials: int) -> None:
    rng = random.Random(3)
    with shmipc.Heap.anonymous(16 << 20) as heap:
        for t in range(trials):
            ch = heap.channel(f"r{t}", capacity=8)

            def push(ch: Any = ch) -> None:
                try:
                    ch.send(b"x" * 64, timeout=0)
                except TimeoutError:
                    pass

            _kill_at_random(ctx, rng, w.channel_receiver, heap, f"r{t}", during=push)
            with pytest.raises(shmipc.PeerDiedError):
                for _ in range(100):  # fills the ring, then must notice the dead receiver
                    ch.send(b"y" * 64, timeout=10)
            ch.release()


def test_a_thousand_channel_trials_in_one_heap_with_kills_and_removal(ctx: Any) -> None:
    """1,000 channel trials in one heap (the directory has no fixed limit; heap.remove frees a
    finished channel): every 50th trial's receiver is a process SIGKILLed mid-stream."""
    rng = random.Random(11)
    with shmipc.Heap.anonymous(16 << 20) as heap:
        base = _used(heap)
        for t in range(1000):
            name = f"k{t}"
            tx = heap.channel(name, capacity=8)
            if t % 50 == 0:

                def push(ch: Any = tx) -> None:
                    try:
                        ch.send(b"x" * 300, timeout=0)
                    except TimeoutError:
                        pass

                _kill_at_random(ctx, rng, w.channel_receiver, heap, name, during=push)
                with pytest.raises(shmipc.PeerDiedError):
                    for _ in range(100):
                        tx.send(b"y" * 300, timeout=10)
            else:
                rx = heap.channel(name, capacity=8)
                for i in range(5):
                    tx.send(bytes([i]) * (1 + 97 * i), timeout=10)  # inline and block records
                assert [len(rx.recv_bytes(timeout=10)) for _ in range(5)] == [1, 98, 195, 292, 389]
                rx.close()
            tx.close()
            heap.remove(name)
        assert heap.channels() == {}
        assert _used(heap) <= base + 64 * 1024, "channel trials leaked heap memory"


# ------------------------------------------------------------------------------- topics
def _used(heap: shmipc.Heap) -> int:
    gc.collect()
    heap._flush_caches()
    return int(heap.stats()["used"])


def test_topic_publisher_killed_subscribers_see_an_ordered_prefix_and_nothing_leaks(
    ctx: Any, trials: int
) -> None:
    rng = random.Random(8)
    with shmipc.Heap.anonymous(32 << 20) as heap:
        base = _used(heap)
        for t in range(trials):
            name = f"t{t}"
            heap.publisher(name, capacity=16, history=2).close()  # the topic exists...
            heap.remove(name)  # ...and is gone again: the child creates it
            subs: list[Any] = []
            got: list[list[int]] = [[], []]

            def drain(subs: list[Any] = subs, got: list[list[int]] = got, name: str = name) -> None:
                if not subs and name in heap.topics():
                    subs.extend(heap.subscriber(name) for _ in range(2))
                for s, g in zip(subs, got, strict=False):
                    try:
                        blk = s.recv(timeout=0)
                    except TimeoutError:
                        continue
                    g.append(struct.unpack("<q", bytes(blk)[:8])[0])
                    blk.release()

            _kill_at_random(ctx, rng, w.topic_publisher, heap, name, during=drain)
            if not subs:
                subs.extend(heap.subscriber(name) for _ in range(2))
            for s, g in zip(subs, got, strict=True):
                with pytest.raises(shmipc.PeerDiedError):  # not TimeoutError
                    while True:
                        blk = s.recv(timeout=10)
                        g.append(struct.unpack("<q", bytes(blk)[:8])[0])
                        blk.release()
                if g:
                    assert g == list(range(g[0], g[0] + len(g))), f"trial {t}: out of order/lost"
                s.close()
            heap.remove(name)
            assert _used(heap) == base, f"trial {t}: samples not reclaimed"


def test_topic_subscribers_killed_never_block_the_publisher_and_nothing_leaks(
    ctx: Any, trials: int
) -> None:
    rng = random.Random(9)
    with shmipc.Heap.anonymous(32 << 20) as heap:
        base = _used(heap)
        for t in range(trials):
            name = f"s{t}"
            pub = heap.publisher(name, capacity=8, history=1)

            def push(pub: Any = pub) -> None:
                try:
                    pub.publish(b"x" * 64, timeout=0)
                except TimeoutError:
                    pass

            _kill_at_random(ctx, rng, w.topic_subscriber, heap, name, t, during=push)
            for _ in range(40):  # fills the dead subscriber's queue, then must go past it
                pub.publish(b"y" * 64, timeout=10)  # TimeoutError if it stayed blocked
            pub.close()
            heap.remove(name)
            assert _used(heap) == base, f"trial {t}: the dead subscriber's samples leaked"


# ------------------------------------------------------------------------------- values
def test_value_readers_never_see_a_torn_value_and_the_next_writer_proceeds(
    ctx: Any, trials: int, name: str
) -> None:
    rng = random.Random(4)
    with shmipc.SharedValue.create(name, size=64 << 10) as v:
        v.write(np.full(4096, -1, dtype=np.int64))

        def check(v: Any = v) -> None:
            arr = v.read()
            assert isinstance(arr, np.ndarray) and arr.shape == (4096,)
            assert (arr == arr[0]).all(), "torn value"

        for t in range(trials):
            _kill_at_random(ctx, rng, w.value_writer, name, t * 1_000_000, during=check)
            check()
            v.write(np.full(4096, -2, dtype=np.int64))  # no orphaned lock
            assert int(v.read()[0]) == -2


# ------------------------------------------------------------------------------- queues
def test_queue_producer_killed_committed_messages_arrive_exactly_once(
    ctx: Any, trials: int, name: str
) -> None:
    rng = random.Random(5)
    with shmipc.MessageQueue.create(name, maxsize=64, max_message_size=64) as q:
        for t in range(trials):
            committed = ctx.Value("q", 0, lock=False)
            got: list[int] = []

            def consume(q: Any = q, got: list[int] = got) -> None:
                try:
                    got.append(struct.unpack("<q", q.get_bytes(timeout=0))[0])
                except queue.Empty:
                    pass

            _kill_at_random(ctx, rng, w.queue_producer, name, committed, during=consume)
            while True:
                try:
                    got.append(struct.unpack("<q", q.get_bytes(timeout=0.2))[0])
                except queue.Empty:
                    break
            assert got == list(range(len(got))), f"trial {t}: lost, duplicated or reordered"
            c = committed.value
            assert c <= len(got) <= c + 1, f"trial {t}: committed {c}, delivered {len(got)}"
            q.put_bytes(b"probe", timeout=5)  # never blocked by the dead producer
            assert q.get_bytes(timeout=5) == b"probe"


def test_queue_consumer_killed_no_message_is_duplicated_and_at_most_one_is_lost(
    ctx: Any, trials: int, name: str
) -> None:
    rng = random.Random(6)
    n = 200
    with shmipc.MessageQueue.create(name, maxsize=32, max_message_size=64) as q:
        for t in range(trials):
            taken = ctx.Array("q", n, lock=False)
            ntaken = ctx.Value("q", 0, lock=False)
            sent = iter(range(n))
            pending: list[int] = []

            def produce(q: Any = q, sent: Any = sent, pending: list[int] = pending) -> None:
                i = pending.pop() if pending else next(sent, None)
                if i is None:
                    return
                try:
                    q.put_bytes(struct.pack("<q", i), timeout=0)
                except queue.Full:
                    pending.append(i)

            _kill_at_random(ctx, rng, w.queue_consumer, name, taken, ntaken, during=produce)
            got: list[int] = []
            for i in [*pending, *sent]:
                while True:
                    try:
                        q.put_bytes(struct.pack("<q", i), timeout=0)
                        break
                    except queue.Full:
                        got.append(struct.unpack("<q", q.get_bytes(timeout=5))[0])
            while True:
                try:
                    got.append(struct.unpack("<q", q.get_bytes(timeout=0.2))[0])
                except queue.Empty:
                    break
            by_child = list(taken[: ntaken.value])
            assert len(set(got)) == len(got), f"trial {t}: duplicate delivery"
            assert not set(got) & set(by_child), f"trial {t}: delivered twice"
            lost = set(range(n)) - set(got) - set(by_child)
            assert len(lost) <= 1, f"trial {t}: lost {sorted(lost)}"


# ------------------------------------------------------------------------------- streams
def test_stream_of_a_killed_owner_is_replaced_by_the_next_owner(
    ctx: Any, trials: int, name: str
) -> None:
    rng = random.Random(7)
    for _ in range(trials):
        # each new owner replaces the stale stream the previous (killed) one left
        _kill_at_random(ctx, rng, w.stream_owner, name)
        assert not shmipc.stream_info(name)["owner_alive"]
    with shmipc.open_stream(name, "w+b", owner=True) as f:
        f.write(b"mine")
    assert not os.path.exists(f"/dev/shm/{name}")


# ------------------------------------------------------------------------------- buffers
def test_buffer_sender_killed_receiver_gets_whole_buffers_then_eof_and_leaks_no_fd(
    ctx: Any, trials: int
) -> None:
    rng = random.Random(8)
    fds = _fd_count()
    for t in range(trials):
        a, b = socket.socketpair()
        got: list[int] = []

        def take(a: socket.socket = a, got: list[int] = got) -> None:
            try:
                buf = shmipc.recv(a, timeout=0)
            except TimeoutError:
                return
            i = struct.unpack("<q", bytes(memoryview(buf)[:8]))[0]
            assert buf.meta == {"i": i}
            got.append(i)
            buf.close()

        _kill_at_random(ctx, rng, w.buffer_sender, b, during=take)
        b.close()
        with pytest.raises((EOFError, shmipc.CorruptSegmentError)):
            while True:
                buf = shmipc.recv(a, timeout=10)
                got.append(struct.unpack("<q", bytes(memoryview(buf)[:8]))[0])
                buf.close()
        assert got == list(range(len(got))), f"trial {t}"
        a.close()
    assert _fd_count() <= fds


# ------------------------------------------------------------------------------- dict
def test_dict_writer_killed_leaves_no_torn_entry_and_no_wedged_lock(
    ctx: Any, trials: int, name: str
) -> None:
    rng = random.Random(9)
    with shmipc.Heap.create(name, size=32 << 20) as heap:
        d = heap.dict("torture")
        for t in range(trials):
            _kill_at_random(ctx, rng, w.dict_writer, name, "torture", t)
            for k, v in d.items():
                assert isinstance(v, np.ndarray) and v.dtype == np.int32, (k, v)
                assert len(v) == v[0] and (v == v[0]).all(), f"trial {t}: torn entry {k}"
            d["probe"] = np.full(3, 3, dtype=np.int32)  # not wedged
            del d["probe"]
