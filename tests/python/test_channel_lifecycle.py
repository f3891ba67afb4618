"""Channels end like pipes (API.md §8, last bullet): whichever way a peer process goes away, the
other side gets PeerDiedError once it drained, never an endless wait."""

from __future__ import annotations

import gc
import multiprocessing as mp
from collections.abc import Iterator

import pytest

import shmipc

import workers_lifecycle as w
from testutil import join_all


@pytest.fixture
def heap() -> Iterator[shmipc.Heap]:
    h = shmipc.Heap.anonymous(16 << 20)
    yield h
    gc.collect()
    h.close()


def drain(ch: shmipc.Channel, n: int) -> list[bytes]:
    return [ch.recv_bytes(timeout=30) for _ in range(n)]


@pytest.mark.parametrize("worker", [w.send_and_return, w.send_and_raise])
def test_a_sender_process_that_exits_without_close_ends_the_stream_with_peer_died(
    heap: shmipc.Heap, spawn: mp.context.SpawnContext, worker: object
) -> None:
    rx = heap.channel("c", capacity=64)
    p = spawn.Process(target=worker, args=(heap, "c", 5))
    p.start()
    assert drain(rx, 5) == [b"m%d" % i for i in range(5)]
    join_all([p])
    # timeout=None would wait forever if the departure were missed; a bound keeps the test safe
    # and PeerDiedError (not TimeoutError) proves the departure ended the wait.
    with pytest.raises(shmipc.PeerDiedError):
        rx.recv(timeout=30)
    assert heap.channels()["c"]["sender_alive"] is False


def test_an_exception_inside_with_aborts_the_stream_instead_of_ending_it(
    heap: shmipc.Heap, spawn: mp.context.SpawnContext
) -> None:
    rx = heap.channel("c", capacity=64)
    p = spawn.Process(target=w.send_in_with_then_raise, args=(heap, "c", 3))
    p.start()
    join_all([p])
    assert drain(rx, 3) == [b"m0", b"m1", b"m2"]
    with pytest.raises(shmipc.PeerDiedError):  # not a clean EOFError: the stream failed
        rx.recv(timeout=30)


def test_an_exception_inside_with_in_the_same_process_aborts_too(heap: shmipc.Heap) -> None:
    rx = heap.channel("c")
    with pytest.raises(RuntimeError), heap.channel("c") as tx:
        tx.send(b"x")
        raise RuntimeError("boom")
    assert rx.recv_bytes(timeout=5) == b"x"
    with pytest.raises(shmipc.PeerDiedError):
        rx.recv(timeout=5)


def test_close_still_ends_the_stream_cleanly(heap: shmipc.Heap) -> None:
    rx = heap.channel("c")
    with heap.channel("c") as tx:
        tx.send(b"x")
    assert rx.recv_bytes(timeout=5) == b"x"
    with pytest.raises(EOFError) as e:
        rx.recv(timeout=5)
    assert not isinstance(e.value, shmipc.PeerDiedError)


def test_a_receiver_process_that_exits_ends_a_senders_wait_on_a_full_channel(
    heap: shmipc.Heap, spawn: mp.context.SpawnContext
) -> None:
    tx = heap.channel("c", capacity=2)
    q = spawn.Queue()
    p = spawn.Process(target=w.recv_some_and_exit, args=(heap, "c", 1, q))
    p.start()
    tx.send(b"0", timeout=30)
    assert q.get(timeout=60) == "received"
    join_all([p])
    tx.send(b"1", timeout=5)
    tx.send(b"2", timeout=5)  # full now, and nobody will read
    with pytest.raises(shmipc.PeerDiedError):
        tx.send(b"3", timeout=30)


def test_an_explicit_release_hands_the_role_over_without_ending_the_stream(
    heap: shmipc.Heap,
) -> None:
    rx = heap.channel("c")
    tx = heap.channel("c")
    tx.send(b"a")
    tx.release()
    assert rx.recv_bytes(timeout=5) == b"a"
    with pytest.raises(TimeoutError):  # still waiting for a sender: no PeerDiedError
        rx.recv(timeout=0.2)
    tx.send(b"b")  # the same (or another) handle takes the role again
    assert rx.recv_bytes(timeout=5) == b"b"
