"""Awaitables (API.md section 9): asyncio, uvloop, trio via anyio; real spawned peers."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import queue
import random
import socket
import statistics
import tempfile
import time

import numpy as np
import pytest

import shmipc

import workers_async as w
from testutil import join_all

ctx = mp.get_context("spawn")


@pytest.fixture
def heap(name: str):
    h = shmipc.Heap.create(name, size=8 << 20)
    yield h
    h.close()


def start(target, *args):
    p = ctx.Process(target=target, args=args)
    p.start()
    return p


def ints(blks) -> list[int]:
    return [int.from_bytes(bytes(b), "little") for b in blks]


@pytest.mark.parametrize("mode", ["futex_waitv", "threads"])
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_async_for_receives_a_spawned_senders_stream(heap, monkeypatch, mode, loop) -> None:
    if loop == "uvloop":
        pytest.importorskip("uvloop")  # in the test extra; the spawned consumer needs it
    if mode == "futex_waitv" and shmipc.reactor_info()["mode"] != "futex_waitv":
        pytest.skip(
            "futex_waitv unavailable or SHMIPC_REACTOR=threads (the threads case covers it)"
        )
    monkeypatch.setenv("SHMIPC_REACTOR", mode if mode == "threads" else "waitv")
    out = ctx.Queue()
    n = 3000
    procs = [
        start(w.async_consumer, heap, "s", n, out, loop),
        start(w.sender, heap, "s", n, 0.002),
    ]
    got_mode, got = out.get(timeout=120)
    join_all(procs)
    assert got_mode == mode
    assert got == list(range(n))


def test_cancellation_by_wait_for_loses_nothing(heap) -> None:
    n = 2000
    rx = heap.channel("c")
    rx.poll(0)  # nothing yet
    p = start(w.sender, heap, "c", n, 0.003, 7)
    rnd = random.Random(3)

    async def main() -> tuple[list[int], int]:
        got: list[int] = []
        timeouts = 0
        while True:
            try:
                blk = await asyncio.wait_for(rx.arecv(), timeout=rnd.choice([1e-4, 5e-4, 2e-3]))
            except asyncio.TimeoutError:
                timeouts += 1
                continue
            except EOFError:
                return got, timeouts
            got.append(int.from_bytes(bytes(blk), "little"))

    got, timeouts = asyncio.run(asyncio.wait_for(main(), 120))
    join_all([p])
    assert got == list(range(n)), "every message exactly once, in order"
    assert timeouts > 0, "the test must actually cancel awaits"
    assert shmipc.reactor_info()["armed"] == 0


def test_cancellation_of_queue_gets_loses_nothing(name) -> None:
    n = 1500
    q = shmipc.MessageQueue.create(name, maxsize=64, max_message_size=64)
    p = start(w.queue_producer, name, n, 0.003)
    rnd = random.Random(5)

    async def main() -> tuple[list[int], int]:
        got: list[int] = []
        timeouts = 0
        while len(got) < n:
            try:
                got.append(await asyncio.wait_for(q.aget(), rnd.choice([1e-4, 1e-3])))
            except asyncio.TimeoutError:
                timeouts += 1
        return got, timeouts

    got, timeouts = asyncio.run(asyncio.wait_for(main(), 120))
    join_all([p])
    q.close()
    assert sorted(got) == list(range(n)) and len(set(got)) == n
    assert timeouts > 0


def test_the_loop_keeps_ticking_while_100_coroutines_await(heap, name) -> None:
    ticks = shmipc.SharedValue.create(name + "-ticks", size=16)
    names = [f"lag{i}" for i in range(100)]
    chans = [heap.channel(n, capacity=4) for n in names]
    for ch in chans:
        ch.poll(0)
    need = 300  # the producer sends only after this many ticks: a blocked loop never gets there
    p = start(w.lag_ticks_then_send, heap, names, ticks.name, need)
    lags: list[float] = []

    async def ticker(stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            t0 = loop.time()
            await asyncio.sleep(0.001)
            lags.append(loop.time() - t0 - 0.001)
            ticks.write(b"t")

    async def main() -> list[int]:
        stop = asyncio.Event()
        tick = asyncio.create_task(ticker(stop))
        got = await asyncio.gather(*(ch.arecv(timeout=60) for ch in chans))
        stop.set()
        await tick
        return ints(got)

    got = asyncio.run(main())
    join_all([p])
    ticks.close()
    assert got == list(range(100))
    assert len(lags) >= need
    lags.sort()
    p99 = lags[int(len(lags) * 0.99)]
    print(
        f"loop lag with 100 awaiting coroutines: median {statistics.median(lags) * 1e6:.0f} us, "
        f"p99 {p99 * 1e6:.0f} us over {len(lags)} ticks"
    )


def test_a_dead_sender_ends_the_await_with_peer_died(heap) -> None:
    rx = heap.channel("d")
    rx.poll(0)
    p = start(w.sender_then_die, heap, "d", 3)

    async def main() -> list[int]:
        got = []
        with pytest.raises(shmipc.PeerDiedError):
            while True:
                got.append(int.from_bytes(bytes(await rx.arecv(timeout=30)), "little"))
        return got

    assert asyncio.run(main()) == [0, 1, 2]
    join_all([p])


def test_asend_waits_for_room_without_blocking_the_loop(heap) -> None:
    n = 500
    tx = heap.channel("f", capacity=4)
    out = ctx.Queue()
    p = start(w.slow_receiver, heap, "f", n, out)

    async def main() -> int:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.001)
                ticks += 1

        t = asyncio.create_task(tick())
        for i in range(n):
            if i % 2:
                await tx.asend(i.to_bytes(4, "little"), timeout=60)
            else:
                await tx.asend_array(np.frombuffer(i.to_bytes(4, "little"), np.uint8), timeout=60)
        t.cancel()
        return ticks

    ticks = asyncio.run(main())
    assert out.get(timeout=60) == list(range(n))
    join_all([p])
    assert ticks > 0


def test_asend_times_out_and_keeps_the_block(heap) -> None:
    tx = heap.channel("g", capacity=1)
    heap.channel("g").poll(0)  # a receiver handle exists but never receives

    async def main() -> None:
        await tx.asend(b"first")
        blk = heap.allocate(8)
        with pytest.raises(TimeoutError):
            await tx.asend(blk, timeout=0.05)
        assert not blk.released, "a timed-out send leaves the Block to the caller"
        blk.release()

    asyncio.run(main())


def test_arecv_array_and_timeouts(heap) -> None:
    tx = heap.channel("h")
    rx = heap.channel("h")

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await rx.arecv(timeout=0.02)
        with pytest.raises(TimeoutError):
            await rx.arecv_array(timeout=0)
        tx.send_array(np.arange(6, dtype=np.float32).reshape(2, 3))
        a = await rx.arecv_array(timeout=5)
        assert a.shape == (2, 3) and a.dtype == np.float32 and a[1, 2] == 5
        tx.send(b"xyz")
        assert await rx.arecv_bytes() == b"xyz"
        with pytest.raises(TypeError):
            await rx.arecv(timeout="soon")

    asyncio.run(main())


def test_closing_a_channel_ends_an_await(heap) -> None:
    rx = heap.channel("i")

    async def main() -> None:
        task = asyncio.create_task(rx.arecv(timeout=30))
        await asyncio.sleep(0.05)
        rx.close()
        with pytest.raises(ValueError, match="closed"):
            await task

    asyncio.run(main())
    assert shmipc.reactor_info()["armed"] == 0


def test_queue_aget_aput_with_spawned_peers(name) -> None:
    with shmipc.MessageQueue.create(name, maxsize=8, max_message_size=128) as q:
        out = ctx.Queue()
        n = 300
        cons = start(w.queue_consumer, name, n, out)

        async def put_all() -> None:
            for i in range(n):
                await q.aput(i, timeout=60)

        asyncio.run(put_all())
        got = out.get(timeout=60)
        join_all([cons])
        # Exactly once. (FIFO is not asserted: the queue engine itself sometimes delivers one
        # producer's messages out of order under load, with the blocking API too -- see
        # test_queue.py::test_exactly_once_with_4_producers_4_consumers_and_50000_messages.)
        assert sorted(got) == list(range(n))

        async def rest() -> None:
            with pytest.raises(queue.Empty):
                await q.aget(timeout=0.05)
            prod = start(w.queue_producer, name, 20)
            got = [await q.aget(timeout=60) for _ in range(20)]
            join_all([prod])
            assert sorted(got) == list(range(20))
            for i in range(8):
                await q.aput_bytes(b"x%d" % i)
            with pytest.raises(queue.Full):
                await q.aput_bytes(b"y", timeout=0.05)
            assert await q.aget_bytes() in {b"x%d" % i for i in range(8)}

        asyncio.run(rest())


def test_closing_a_queue_ends_an_await(name) -> None:
    q = shmipc.MessageQueue.create(name, maxsize=8, max_message_size=128)

    async def main() -> None:
        task = asyncio.create_task(q.aget(timeout=30))
        await asyncio.sleep(0.05)
        q.close()
        with pytest.raises(ValueError, match="closed"):
            await task

    asyncio.run(main())


def test_value_await_change_and_changes(name) -> None:
    v = shmipc.SharedValue.create(name, size=64)
    p = start(w.value_writer, name, 5, 0.05)

    async def main() -> list[str]:
        seen: list[str] = []
        ver = await v.await_change(timeout=30)
        assert ver >= 1
        seen.append(v.read())
        async for value in v.changes():
            seen.append(value)
            if value == "value 4":
                return seen
        return seen

    seen = asyncio.run(asyncio.wait_for(main(), 60))
    join_all([p])
    assert seen[-1] == "value 4"
    assert seen == sorted(set(seen), key=seen.index), "no value delivered twice"

    async def timeout() -> None:
        with pytest.raises(TimeoutError):
            await v.await_change(timeout=0.02)
        with pytest.raises(ValueError):
            await v.await_change(since=-1)

    asyncio.run(timeout())
    v.close()


def test_shmipc_arecv_on_a_socket_uses_the_loop(tmp_path) -> None:
    path = os.path.join(tempfile.mkdtemp(dir=tmp_path), "s")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    p = start(w.socket_sender, path, 5)
    conn, _ = srv.accept()

    async def main() -> list[int]:
        got = []
        for _ in range(5):
            buf = await shmipc.arecv(conn, timeout=30)
            got.append(int.from_bytes(bytes(memoryview(buf)), "little"))
        with pytest.raises(EOFError):
            await shmipc.arecv(conn, timeout=30)
        return got

    assert asyncio.run(main()) == list(range(5))
    join_all([p])
    conn.close()
    srv.close()


def test_shmipc_arecv_array_on_a_socket(tmp_path) -> None:
    path = os.path.join(tempfile.mkdtemp(dir=tmp_path), "s")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    p = start(w.socket_array_sender, path)
    conn, _ = srv.accept()

    async def main() -> np.ndarray:
        with pytest.raises(TimeoutError):
            await shmipc.arecv_array(conn, timeout=0)
        return await shmipc.arecv_array(conn, timeout=30)

    a = asyncio.run(main())
    join_all([p])
    assert a.shape == (3, 4) and a.dtype == np.int32 and a[2, 3] == 11
    conn.close()
    srv.close()


def test_a_dead_receiver_ends_an_asend_with_peer_died(heap) -> None:
    tx = heap.channel("dr", capacity=2)
    ready = ctx.Queue()
    p = start(w.receiver_then_die, heap, "dr", ready)
    assert ready.get(timeout=60) == "claimed"

    async def main() -> int:
        sent = 0
        with pytest.raises(shmipc.PeerDiedError):
            for _ in range(10):
                await tx.asend(b"m", timeout=30)
                sent += 1
        return sent

    assert asyncio.run(main()) == 2, "the ring filled, then the receiver's death ended the wait"
    join_all([p])


def test_trio_via_anyio(heap, name) -> None:
    anyio = pytest.importorskip("anyio")
    pytest.importorskip("trio")
    rx = heap.channel("t")
    rx.poll(0)
    q = shmipc.MessageQueue.create(name + "-q", maxsize=8, max_message_size=64)
    v = shmipc.SharedValue.create(name + "-v", size=64)
    procs = [
        start(w.sender, heap, "t", 200, 0.002),
        start(w.queue_producer, name + "-q", 50, 0.002),
        start(w.value_writer, name + "-v", 3, 0.05),
    ]

    async def main() -> tuple[list[int], list[int], int]:
        got = [int.from_bytes(bytes(b), "little") async for b in rx]
        items = [await q.aget(timeout=30) for _ in range(50)]
        ver = await v.await_change(timeout=30)
        with anyio.move_on_after(0.02):  # cancellation under trio loses nothing either
            await q.aget()
        # ready_fd with anyio.wait_readable directly
        fd = v.ready_fd()
        with anyio.fail_after(30):
            while v.version < 3:
                await anyio.wait_readable(fd)
                v.read()
                fd = v.ready_fd()
        return got, items, ver

    got, items, ver = anyio.run(main, backend="trio")
    join_all(procs)
    q.close()
    v.close()
    assert got == list(range(200))
    assert sorted(items) == list(range(50))
    assert ver >= 1


def test_awaits_outside_an_event_loop_say_so(heap) -> None:
    rx = heap.channel("o")
    coro = rx.arecv()
    with pytest.raises(RuntimeError, match="event loop"):
        coro.send(None)
    coro.close()


def test_aput_and_aget_move_big_buffers_out_of_band_like_put_and_get(name: str) -> None:
    arr = np.arange(1 << 18, dtype=np.float64)  # 2 MiB: far above max_message_size

    async def main() -> None:
        with shmipc.MessageQueue.create(name, maxsize=4, max_message_size=4096) as q:
            await q.aput({"a": arr, "n": 1}, timeout=10)
            got = await q.aget(timeout=10)
            assert got["n"] == 1 and np.array_equal(got["a"], arr)
            q.put({"b": arr})
            again = await q.aget(timeout=10)
            assert np.array_equal(again["b"], arr)
            del got, again

    asyncio.run(main())


@pytest.mark.parametrize("die", [False, True], ids=["closed", "killed"])
def test_subscribers_await_every_sample_of_a_spawned_publisher(heap, die: bool) -> None:
    n = 500
    p = start(w.topic_publisher, heap, "t", n, 2, die)
    for _ in range(2000):  # the publisher creates the topic
        if "t" in heap.topics():
            break
        time.sleep(0.005)
    subs = [heap.subscriber("t") for _ in range(2)]

    async def consume(sub) -> tuple[list[int], str]:
        got = []
        try:
            async for s in sub:
                got.append(int.from_bytes(bytes(s), "little"))
                s.release()
            return got, "eof"
        except shmipc.PeerDiedError:
            return got, "peer-died"

    async def main():
        return await asyncio.gather(*(consume(s) for s in subs))

    results = asyncio.run(asyncio.wait_for(main(), 120))
    join_all([p])
    for got, end in results:
        assert got == list(range(n))
        assert end == ("peer-died" if die else "eof")
    for s in subs:
        s.close()


def test_a_subscriber_ready_fd_works_with_selectors(heap) -> None:
    import selectors

    pub = heap.publisher("r", capacity=8)
    sub = heap.subscriber("r")
    sel = selectors.DefaultSelector()
    sel.register(sub.ready_fd(), selectors.EVENT_READ)
    assert sel.select(timeout=0) == []
    pub.publish(b"x")
    assert sel.select(timeout=10)
    assert sub.recv_bytes(timeout=0) == b"x"
    with pytest.raises(TimeoutError):
        asyncio.run(sub.arecv(timeout=0.05))
    sel.close()
    sub.close()
    pub.close()
