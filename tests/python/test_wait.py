"""shmipc.wait() and ready_fd() (API.md section 9) with real spawned peers."""

from __future__ import annotations

import multiprocessing as mp
import selectors
import socket

import pytest

import shmipc

import workers_async as w
from testutil import join_all

ctx = mp.get_context("spawn")


@pytest.fixture
def heap(name: str):
    h = shmipc.Heap.create(name, size=32 << 20)
    yield h
    h.close()


def start(target, *args):
    p = ctx.Process(target=target, args=args)
    p.start()
    return p


def test_wait_on_a_thousand_channels_returns_exactly_the_ready_ones(heap, name) -> None:
    # A heap names at most 256 objects: 4 heaps of 250 channels.
    heaps = [heap] + [shmipc.Heap.create(f"{name}-{k}", size=8 << 20) for k in range(1, 4)]
    names = [f"w{i}" for i in range(1000)]
    chans = [heaps[i // 250].channel(n, capacity=2) for i, n in enumerate(names)]
    assert shmipc.wait(chans, timeout=0) == []
    picks = [3, 500, 999, 17, 640]
    procs = [
        start(w.send_to_some, heaps[k], names, [i for i in picks if i // 250 == k], 0.2)
        for k in range(4)
    ]
    got: set[int] = set()
    ended: set[int] = set()
    pending = list(chans)
    while len(ended) < len(picks):
        ready = shmipc.wait(pending, timeout=30)
        assert ready, "timed out"
        for ch in ready:
            i = chans.index(ch)
            assert i in picks
            try:
                assert int.from_bytes(bytes(ch.recv(timeout=0)), "little") == i
                got.add(i)
            except EOFError:
                assert i in got
                ended.add(i)
                pending.remove(ch)
    join_all(procs)
    assert got == set(picks)
    assert shmipc.reactor_info()["armed"] == 0
    for h in heaps[1:]:
        h.close()


def test_wait_mixes_channels_queues_values_and_sockets(heap, name) -> None:
    ch = heap.channel("m")
    tx = heap.channel("m")
    q = shmipc.MessageQueue.create(name + "-q", maxsize=4, max_message_size=64)
    v = shmipc.SharedValue.create(name + "-v", size=64)
    a, b = socket.socketpair()
    objs = [ch, q, v, a]
    assert shmipc.wait(objs, timeout=0.05) == []
    b.send(b"x")
    assert shmipc.wait(objs, timeout=5) == [a]
    a.recv(1)
    q.put(1)
    assert shmipc.wait(objs, timeout=5) == [q]
    q.get()
    v2 = shmipc.SharedValue.attach(v.name)
    v2.write("new")
    assert shmipc.wait(objs, timeout=5) == [v]
    v.read()
    tx.send(b"y")
    assert shmipc.wait(objs, timeout=5) == [ch]
    ch.recv()
    tx.close()
    assert shmipc.wait(objs, timeout=5) == [ch], "an ended stream is ready: recv raises EOFError"
    for o in (q, v, v2, a, b):
        o.close()
    with pytest.raises(TypeError):
        shmipc.wait([object()])


def test_wait_sees_a_dead_sender(heap) -> None:
    rx = heap.channel("dead")
    rx.poll(0)
    p = start(w.sender_then_die, heap, "dead", 1)
    join_all([p])
    assert shmipc.wait([rx], timeout=10) == [rx]
    assert rx.recv(timeout=0) is not None, "what it sent is received first"
    assert shmipc.wait([rx], timeout=10) == [rx], "then the dead sender makes it ready"
    with pytest.raises(shmipc.PeerDiedError):
        rx.recv(timeout=0)  # at once, as wait() promised


@pytest.mark.parametrize("mode", ["waitv", "threads"])
def test_wait_in_a_spawned_process_in_both_reactor_modes(heap, monkeypatch, mode) -> None:
    if mode == "waitv" and shmipc.reactor_info()["mode"] != "futex_waitv":
        pytest.skip(
            "futex_waitv unavailable or SHMIPC_REACTOR=threads (the threads case covers it)"
        )
    monkeypatch.setenv("SHMIPC_REACTOR", mode)
    names = [f"s{i}" for i in range(200)]
    for n in names:
        heap.channel(n, capacity=2).poll(0)
    out = ctx.Queue()
    p = start(w.wait_in_child, heap, names, out)
    s = start(w.send_to_some, heap, names, [150], 0.5)
    got_mode, ready = out.get(timeout=60)
    join_all([p, s])
    assert got_mode == ("futex_waitv" if mode == "waitv" else "threads")
    assert ready == [150]


def test_ready_fd_with_selectors(heap, name) -> None:
    rx = heap.channel("sel")
    q = shmipc.MessageQueue.create(name + "-q", maxsize=4, max_message_size=64)
    sel = selectors.DefaultSelector()
    sel.register(rx.ready_fd(), selectors.EVENT_READ, rx)
    sel.register(q.ready_fd(), selectors.EVENT_READ, q)
    assert sel.select(0.05) == []
    p = start(w.sender, heap, "sel", 3)
    seen = []
    ended = False
    while not ended:
        events = sel.select(30)
        assert events, "timed out"
        for key, _ in events:
            if key.data is q:  # "may have data" (API.md §9): a wake-up with nothing queued
                assert q.qsize() == 0, "nothing was put in the queue"
                q.ready_fd()  # re-arm
                continue
            assert key.data is rx
            try:
                while True:
                    seen.append(int.from_bytes(bytes(rx.recv(timeout=0)), "little"))
            except TimeoutError:
                pass
            except EOFError:
                ended = True
            assert rx.ready_fd() == key.fd, "re-arming keeps the same fd"
    join_all([p])
    assert seen == [0, 1, 2]
    sel.unregister(rx.ready_fd())
    q2 = shmipc.MessageQueue.attach(q.name)
    q2.put("job")
    (key, _), *_ = sel.select(10)
    assert key.data is q and q.get_nowait() == "job"
    q.ready_fd()
    assert sel.select(0.05) == [], "re-armed on an empty queue: not readable"
    sel.close()
    q2.close()
    q.close()


def test_wait_includes_topic_subscribers() -> None:
    h = shmipc.Heap.anonymous(1 << 20)
    pub, quiet = h.publisher("w"), h.publisher("q")
    sub, other = h.subscriber("w"), h.subscriber("q")
    assert shmipc.wait([sub, other], timeout=0.05) == []
    pub.publish(b"a")
    assert shmipc.wait([sub, other], timeout=10) == [sub]
    for x in (sub, other, pub, quiet):
        x.close()
    h.close()
