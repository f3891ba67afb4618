"""Topics (API.md section 8): one publisher, many subscribers, zero copy."""

from __future__ import annotations

import gc
import os
import pickle
import signal
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

import shmipc

import workers_topic as w
from testutil import join_all


@pytest.fixture
def heap(name: str) -> Iterator[shmipc.Heap]:
    h = shmipc.Heap.create(name, size=32 << 20)
    yield h
    gc.collect()
    h.close()


def used(heap: shmipc.Heap) -> int:
    gc.collect()
    heap._flush_caches()
    return int(heap.stats()["used"])


# --- single process: semantics ---------------------------------------------------------


def test_every_subscriber_gets_the_same_read_only_block(heap: shmipc.Heap) -> None:
    pub = heap.publisher("cam", capacity=4)
    a, b = heap.subscriber("cam"), heap.subscriber("cam")
    pub.publish(b"frame-0")
    x, y = a.recv(timeout=5), b.recv(timeout=5)
    assert isinstance(x, shmipc.Block)
    assert bytes(x) == bytes(y) == b"frame-0"
    assert x.offset == y.offset, "one block shared by every subscriber, not copies"
    assert x.readonly and memoryview(x).readonly
    with pytest.raises(TypeError):
        memoryview(x)[0] = 1
    assert not x.as_array().flags.writeable
    with pytest.raises(ValueError):
        x.as_array()[0] = 1


def test_publishing_a_block_moves_it_zero_copy(heap: shmipc.Heap) -> None:
    pub = heap.publisher("cam")
    sub = heap.subscriber("cam")
    blk = heap.allocate(1080 * 1920 * 3)
    frame = blk.as_array(np.uint8, (1080, 1920, 3))
    frame[:] = 7
    del frame
    offset = blk.offset
    pub.publish(blk)
    assert blk.released, "the publisher's Block is released by the move"
    got = sub.recv_array(timeout=5)
    assert got.nbytes == 1080 * 1920 * 3 and (got == 7).all()
    s2 = blk  # released: publishing it again is an error, not a second publication
    with pytest.raises(ValueError):
        pub.publish(s2)
    del got
    assert offset


def test_a_block_with_a_live_view_is_not_published(heap: shmipc.Heap) -> None:
    pub = heap.publisher("cam")
    sub = heap.subscriber("cam")
    blk = heap.allocate(64)
    view = memoryview(blk)
    with pytest.raises(BufferError):
        pub.publish(blk)
    assert not blk.released and len(sub) == 0
    view.release()
    pub.publish(blk)
    assert len(sub) == 1


def test_arrays_keep_dtype_and_shape(heap: shmipc.Heap) -> None:
    pub = heap.publisher("t")
    sub = heap.subscriber("t")
    arr = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    pub.publish(arr)
    pub.publish(np.asfortranarray(arr))
    pub.publish(arr[:, ::2])  # not contiguous: published contiguous
    for want in (arr, arr, arr[:, ::2]):
        got = sub.recv_array(timeout=5)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        assert not got.flags.writeable
    pub.publish(bytearray(b"xyz"))
    assert sub.recv_array(timeout=5).tolist() == [120, 121, 122]
    with pytest.raises(TypeError):
        pub.publish(np.array([object()]))
    with pytest.raises(TypeError):
        pub.publish(12345)


def test_history_len_poll_iteration_and_end_of_stream(heap: shmipc.Heap) -> None:
    pub = heap.publisher("t", capacity=8, history=2)
    for i in range(5):
        pub.publish(w.payload(i))
    late = heap.subscriber("t")
    assert len(late) == 2 and late.poll()
    pub.publish(w.payload(5))
    pub.close()
    assert [bytes(s) for s in late] == [w.payload(i) for i in (3, 4, 5)]
    with pytest.raises(EOFError):
        late.recv(timeout=1)
    assert late.poll(timeout=0), "at the end of the stream recv does not block"


def test_recv_times_out_and_poll_waits(heap: shmipc.Heap) -> None:
    pub = heap.publisher("t")
    sub = heap.subscriber("t")
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        sub.recv(timeout=0.1)
    assert time.monotonic() - t0 >= 0.09
    assert not sub.poll(timeout=0.05)
    threading.Timer(0.1, lambda: pub.publish(b"x")).start()
    assert sub.poll(timeout=10)
    assert sub.recv_bytes(timeout=1) == b"x"


def test_overflow_block_waits_and_times_out(heap: shmipc.Heap) -> None:
    pub = heap.publisher("t", capacity=2)
    sub = heap.subscriber("t")
    pub.publish(b"a")
    pub.publish(b"b")
    assert not pub.ready()
    with pytest.raises(TimeoutError):
        pub.publish(b"c", timeout=0.1)
    blk = heap.allocate(8)
    with pytest.raises(TimeoutError):
        pub.publish(blk, timeout=0.05)
    assert not blk.released, "a timeout leaves the Block with the caller"
    assert sub.recv_bytes(timeout=1) == b"a"
    pub.publish(blk, timeout=0)


def test_drop_oldest_never_waits_and_counts_missed(heap: shmipc.Heap) -> None:
    pub = heap.publisher("t", capacity=3, overflow="drop_oldest")
    sub = heap.subscriber("t")
    for i in range(10):
        pub.publish(w.payload(i), timeout=0)
    assert len(sub) == 3 and sub.missed == 7
    assert [sub.recv_bytes(timeout=1) for _ in range(3)] == [w.payload(i) for i in (7, 8, 9)]


def test_one_publisher_max_subscribers_and_bad_arguments(heap: shmipc.Heap) -> None:
    pub = heap.publisher("t", max_subscribers=2)
    with pytest.raises(shmipc.ChannelBusyError):
        heap.publisher("t")
    subs = [heap.subscriber("t"), heap.subscriber("t")]
    with pytest.raises(shmipc.ShmipcError, match="max_subscribers=2"):
        heap.subscriber("t")
    subs.pop().close()
    subs.append(heap.subscriber("t"))
    with pytest.raises(FileNotFoundError):
        heap.subscriber("nope")
    with pytest.raises(ValueError):
        heap.publisher("u", overflow="sometimes")
    with pytest.raises(ValueError):
        heap.publisher("u", capacity=0)
    with pytest.raises(TypeError):
        heap.publisher("u", capacity=1.5)  # type: ignore[arg-type]
    heap.channel("ch")
    with pytest.raises(ValueError):
        heap.subscriber("ch")  # a channel, not a topic
    pub.close()
    with pytest.raises(ValueError, match="closed"):
        pub.publish(b"x")
    with pytest.raises(BrokenPipeError):
        heap.publisher("t")  # its stream ended: remove it to reuse the name


def test_max_held_is_a_clear_error(heap: shmipc.Heap) -> None:
    pub = heap.publisher("t", capacity=3, max_held=2)
    sub = heap.subscriber("t")
    pub.publish(b"a")
    pub.publish(b"b")
    pub.publish(b"c")
    kept = [sub.recv(timeout=1), sub.recv(timeout=1)]
    with pytest.raises(shmipc.ShmipcError, match="max_held"):
        sub.recv(timeout=1)
    kept.pop().release()
    assert bytes(sub.recv(timeout=1)) == b"c"


def test_memory_is_freed_by_the_last_holder_and_remove_restores_the_baseline(
    heap: shmipc.Heap,
) -> None:
    base = used(heap)
    pub = heap.publisher("t", capacity=4)
    a, b = heap.subscriber("t"), heap.subscriber("t")
    pub.publish(bytes(1 << 20))
    x, y = a.recv(timeout=1), b.recv(timeout=1)
    for _ in range(4):
        pub.publish(b"small")  # the big sample left the ring; a and b still hold it
    assert used(heap) >= base + (1 << 20)
    x.release()
    assert used(heap) >= base + (1 << 20), "b still holds it"
    del y
    assert used(heap) < base + (1 << 20), "freed with the last reference"
    assert set(heap.topics()) == {"t"}
    with pytest.raises(shmipc.ChannelBusyError):
        heap.remove("t")
    pub.close()
    a.close()
    b.close()
    gc.collect()
    heap.remove("t")
    assert heap.topics() == {}
    with pytest.raises(FileNotFoundError):
        heap.remove("t")
    assert used(heap) == base


def test_a_subscriber_closed_while_holding_keeps_its_samples_valid(heap: shmipc.Heap) -> None:
    pub = heap.publisher("t")
    sub = heap.subscriber("t")
    pub.publish(b"kept")
    s = sub.recv(timeout=1)
    sub.close()
    assert sub.closed and bytes(s) == b"kept"
    with pytest.raises(ValueError, match="closed"):
        sub.recv(timeout=0)
    for _ in range(20):
        pub.publish(b"more", timeout=1)  # a closed subscriber does not block the publisher
    s.release()


def test_threads_share_a_subscriber_and_a_publisher(heap: shmipc.Heap) -> None:
    pub = heap.publisher("t", capacity=16)
    subs = [heap.subscriber("t") for _ in range(3)]
    results: list[list[bytes]] = [[] for _ in subs]

    def run(i: int) -> None:
        for s in subs[i]:
            results[i].append(bytes(s))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for i in range(2000):
        pub.publish(w.payload(i), timeout=30)
    pub.close()
    for t in threads:
        t.join(60)
    assert all(r == [w.payload(i) for i in range(2000)] for r in results)


def test_handles_pickle_by_name_and_anonymous_heaps_refuse_plain_pickle(heap: shmipc.Heap) -> None:
    pub = heap.publisher("t")
    sub = heap.subscriber("t")
    sub2 = pickle.loads(pickle.dumps(sub))
    assert sub2.name == "t" and heap.topics()["t"]["subscribers"] == 2
    anon = shmipc.Heap.anonymous(1 << 20)
    try:
        p = anon.publisher("x")
        with pytest.raises(TypeError, match="anonymous"):
            pickle.dumps(p)
        p.close()
    finally:
        gc.collect()
        anon.close()
    pub.close()


# --- processes -------------------------------------------------------------------------


def test_subscribers_in_other_processes_get_every_sample(heap: shmipc.Heap, spawn) -> None:
    pub = heap.publisher("t", capacity=8)
    out, ready = spawn.Queue(), spawn.Queue()
    procs = [
        spawn.Process(target=w.subscribe_and_collect, args=(heap, "t", out, ready))
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=60)
    for i in range(500):
        pub.publish(w.payload(i), timeout=30)
    pub.close()
    results = [out.get(timeout=60) for _ in procs]
    join_all(procs)
    for _pid, got, missed in results:
        assert got == [w.payload(i) for i in range(500)] and missed == 0


def test_a_pickled_subscriber_subscribes_in_the_child(heap: shmipc.Heap, spawn) -> None:
    pub = heap.publisher("t")
    sub = heap.subscriber("t")
    out = spawn.Queue()
    p = spawn.Process(target=w.subscriber_from_pickle, args=(sub, out))
    p.start()
    assert out.get(timeout=60) == "ready"
    deadline = time.monotonic() + 30
    while heap.topics()["t"]["subscribers"] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    pub.publish(b"to the child")
    assert out.get(timeout=60) == b"to the child"
    join_all([p])


def test_a_killed_subscriber_is_reclaimed_and_never_blocks_the_publisher(
    heap: shmipc.Heap, spawn
) -> None:
    base = used(heap)
    pub = heap.publisher("t", capacity=2)
    ready = spawn.Queue()
    p = spawn.Process(target=w.hold_and_wait, args=(heap, "t", ready, 2))
    p.start()
    assert ready.get(timeout=60) == "subscribed"
    pub.publish(bytes(1 << 20))
    pub.publish(bytes(1 << 20))
    assert ready.get(timeout=60) == 2
    pub.publish(b"x")
    pub.publish(b"y")  # the child's queue is full now
    with pytest.raises(TimeoutError):
        pub.publish(b"z", timeout=0.2)
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    pub.publish(b"z", timeout=30)  # the dead subscriber is reaped while we wait (no Timeout)
    assert heap.topics()["t"]["subscribers"] == 0
    pub.close()
    heap.remove("t")
    assert used(heap) == base, "the dead subscriber's samples were freed"


def test_a_killed_publisher_is_peer_died_after_the_drain(heap: shmipc.Heap, spawn) -> None:
    # The publisher child creates the topic and publishes until it is killed.
    ready = spawn.Queue()
    p = spawn.Process(target=w.publish_forever, args=(heap, "t", ready))
    p.start()
    assert ready.get(timeout=60) == "publishing"
    deadline = time.monotonic() + 30
    while "t" not in heap.topics() and time.monotonic() < deadline:
        time.sleep(0.01)
    sub = heap.subscriber("t")
    got = [sub.recv_bytes(timeout=30) for _ in range(20)]
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    with pytest.raises(shmipc.PeerDiedError):  # not TimeoutError
        while True:
            got.append(sub.recv_bytes(timeout=30))
    seqs = [int.from_bytes(g[:8].ljust(8, b"\0"), "little") for g in got]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "in order, none lost, none twice"
    assert all(g == w.payload(s) for g, s in zip(got, seqs, strict=True))
    assert heap.topics()["t"]["publisher_alive"] is False


def test_fuzz_one_publisher_four_subscribers_with_kills(heap: shmipc.Heap, spawn) -> None:
    base = used(heap)
    for overflow in ("block", "drop_oldest"):
        pub = heap.publisher("f", capacity=6, history=2, overflow=overflow)
        out, ready = spawn.Queue(), spawn.Queue()
        procs = [
            spawn.Process(target=w.fuzz_subscriber, args=(heap, "f", seed, out, ready))
            for seed in range(4)
        ]
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=60)
        victims = procs[:2]
        for i in range(3000):
            if i == 700:
                os.kill(victims[0].pid, signal.SIGKILL)
            if i == 1900:
                os.kill(victims[1].pid, signal.SIGKILL)
            p_ = w.payload(i)
            if i % 2:
                blk = heap.allocate(len(p_))
                memoryview(blk)[:] = p_
                pub.publish(blk, timeout=30)
            else:
                pub.publish(p_, timeout=30)
        pub.close()
        results = [out.get(timeout=60) for _ in procs[2:]]
        join_all(procs)
        for _pid, n, errors, missed in results:
            assert errors == 0
            if overflow == "block":
                assert n == 3000 and missed == 0
            else:
                assert n + missed <= 3000 + 2
        heap.remove("f")
        assert used(heap) == base, f"{overflow}: nothing leaked"
    heap._check_invariants()


def test_remove_of_a_channel_frees_what_is_queued(heap: shmipc.Heap) -> None:
    base = used(heap)
    ch = heap.channel("c", capacity=4)
    ch.send(bytes(100000))
    ch.close()
    gc.collect()
    heap.remove("c")
    assert heap.channels() == {}
    assert used(heap) == base


def test_allocate_with_a_timeout_waits_for_memory_to_be_freed(name: str) -> None:
    with shmipc.Heap.create(name, size=4 << 20) as h:
        big = h.allocate(3 << 20)
        t0 = time.monotonic()
        with pytest.raises(MemoryError):
            h.allocate(2 << 20, timeout=0.2)
        assert time.monotonic() - t0 >= 0.19
        with pytest.raises(MemoryError):
            h.allocate(2 << 20)  # timeout=0: at once
        threading.Timer(0.2, big.release).start()
        blk = h.allocate(2 << 20, timeout=10)  # back-pressure: waits for the release
        assert blk.nbytes == 2 << 20
        blk.release()


def test_closing_the_heap_first_leaves_handles_and_samples_harmless(name: str) -> None:
    h = shmipc.Heap.create(name, size=4 << 20)
    pub = h.publisher("t")
    sub = h.subscriber("t")
    pub.publish(b"sample")
    s = sub.recv(timeout=1)
    h.close()  # no buffer views are exported: allowed
    assert pub.closed and sub.closed
    with pytest.raises(ValueError, match="closed"):
        pub.publish(b"x")
    with pytest.raises(ValueError, match="closed"):
        sub.recv(timeout=0)
    s.release()  # the heap is gone: nothing to give back, no crash
    del s, pub, sub
    gc.collect()
