"""SPSC channels in a shared heap (API.md section 2): one test per promised behaviour."""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import pickle
import signal
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

import shmipc

import workers_channel as w
from testutil import join_all


@pytest.fixture
def heap() -> Iterator[shmipc.Heap]:
    h = shmipc.Heap.anonymous(32 << 20)
    yield h
    gc.collect()
    h.close()


def allocations(heap: shmipc.Heap) -> int:
    gc.collect()
    return heap.stats()["allocations"]


# --- single process: semantics -----------------------------------------------------------


def test_bytes_arrive_as_a_block_owned_by_the_receiver(heap: shmipc.Heap) -> None:
    tx, rx = heap.channel("c"), heap.channel("c")
    tx.send(b"hello")
    blk = rx.recv(timeout=5)
    assert isinstance(blk, shmipc.Block)
    assert bytes(blk) == b"hello"
    assert (tx.role, rx.role) == ("sender", "receiver")
    blk.release()


def test_sending_a_block_moves_it_without_a_copy(heap: shmipc.Heap) -> None:
    tx, rx = heap.channel("c"), heap.channel("c")
    blk = heap.allocate(4096)
    blk.as_array(np.uint32)[:] = 7
    offset = blk.offset
    tx.send(blk)
    assert blk.released, "the sender's Block is released by the move"
    got = rx.recv(timeout=5)
    assert got.offset == offset, "the same block, not a copy"
    assert (got.as_array(np.uint32) == 7).all()


def test_a_block_with_a_live_view_is_not_sent_and_stays_usable(heap: shmipc.Heap) -> None:
    tx = heap.channel("c")
    blk = heap.allocate(64)
    view = memoryview(blk)
    with pytest.raises(BufferError):
        tx.send(blk)
    assert not blk.released and len(tx) == 0
    view.release()
    tx.send(blk)
    assert len(tx) == 1


def test_a_block_of_another_heap_is_copied(heap: shmipc.Heap) -> None:
    other = shmipc.Heap.anonymous(1 << 20)
    try:
        blk = other.allocate(16)
        memoryview(blk)[:] = b"0123456789abcdef"
        tx, rx = heap.channel("c"), heap.channel("c")
        tx.send(blk)
        assert not blk.released
        assert rx.recv_bytes(timeout=5) == b"0123456789abcdef"
        blk.release()
    finally:
        other.close()


@pytest.mark.parametrize(
    "arr",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.asfortranarray(np.arange(12, dtype=np.int64).reshape(3, 4)),
        np.arange(20, dtype=np.int16)[::3],  # not contiguous: sent contiguous
        np.array(3.5),  # 0-d
        np.zeros((0, 5), dtype=np.uint8),  # empty
        np.array([(1, [2.0, 3.0]), (4, [5.0, 6.0])], dtype=[("a", "<i4"), ("b", "<f8", (2,))]),
        np.array(["ab", "cde"]),  # unicode
        np.arange(6, dtype=">u4"),  # big endian
    ],
    ids=["c", "fortran", "strided", "0d", "empty", "structured", "unicode", "bigendian"],
)
def test_send_array_keeps_dtype_shape_and_values(heap: shmipc.Heap, arr: np.ndarray) -> None:
    tx, rx = heap.channel("c"), heap.channel("c")
    tx.send_array(arr)
    got = rx.recv_array(timeout=5)
    assert got.dtype == arr.dtype
    assert got.shape == arr.shape
    np.testing.assert_array_equal(got, arr)
    if arr.flags.f_contiguous and not arr.flags.c_contiguous:
        assert got.flags.f_contiguous


def test_object_arrays_are_refused(heap: shmipc.Heap) -> None:
    with pytest.raises(TypeError):
        heap.channel("c").send_array(np.array([object()]))


def test_send_array_of_the_sole_view_of_a_block_moves_the_block(heap: shmipc.Heap) -> None:
    tx, rx = heap.channel("c"), heap.channel("c")
    blk = heap.allocate(8 * 100)
    blk.as_array(np.float64)[:] = np.arange(100)
    offset = blk.offset
    part = blk.as_array(np.float64, (10, 10))[2:5]
    tx.send_array(part)
    assert blk.released, "zero copy: the block moved"
    assert not part.flags.writeable, "the sender's view is read-only now"
    got = rx.recv_array(timeout=5)
    np.testing.assert_array_equal(got, np.arange(20, 50).reshape(3, 10))
    assert got.flags.writeable
    del got
    moved = heap.channel("d"), heap.channel("d")
    blk2 = heap.allocate(64)
    full = blk2.as_array(np.uint8)
    full[:] = 5
    moved[0].send_array(full)
    assert moved[1].recv().offset == blk2.offset != offset


def test_send_array_of_a_block_with_other_views_copies(heap: shmipc.Heap) -> None:
    tx, rx = heap.channel("c"), heap.channel("c")
    blk = heap.allocate(8 * 100)
    full = blk.as_array(np.float64, (10, 10))
    full[:] = np.arange(100).reshape(10, 10)
    tx.send_array(full[2:5])  # `full` still sees the block: it cannot move
    assert not blk.released and full.flags.writeable
    got = rx.recv_array(timeout=5)
    full[:] = 0  # the receiver has its own copy
    np.testing.assert_array_equal(got, np.arange(20, 50).reshape(3, 10))


def test_plain_records_arrive_in_recv_array_as_bytes(heap: shmipc.Heap) -> None:
    tx, rx = heap.channel("c"), heap.channel("c")
    tx.send(b"\x01\x02\x03")
    got = rx.recv_array(timeout=5)
    assert got.dtype == np.uint8 and got.tolist() == [1, 2, 3]


def test_the_block_of_a_received_array_is_freed_when_the_array_is_collected(
    heap: shmipc.Heap,
) -> None:
    tx, rx = heap.channel("c"), heap.channel("c")
    base = allocations(heap)
    tx.send_array(np.ones(1000))
    arr = rx.recv_array(timeout=5)
    view = arr[10:20]
    del arr
    assert allocations(heap) == base + 1, "a view still holds the block"
    # Dropped in another thread: the block is freed there.
    holder = [view]
    del view
    t = threading.Thread(target=holder.clear)
    t.start()
    t.join(10)
    assert allocations(heap) == base


def test_poll_len_and_capacity(heap: shmipc.Heap) -> None:
    tx, rx = heap.channel("c", capacity=3), heap.channel("c")
    assert rx.capacity == 3 and tx.capacity == 3
    assert not rx.poll() and not rx.poll(0.01)
    tx.send(b"a")
    tx.send(b"b")
    assert len(rx) == 2 and rx.poll()
    rx.recv_bytes()
    assert len(tx) == 1


def test_an_existing_channel_keeps_the_capacity_it_was_created_with(heap: shmipc.Heap) -> None:
    heap.channel("c", capacity=5)
    assert heap.channel("c", capacity=1000).capacity == 5


def test_close_of_the_sender_ends_the_stream_after_the_receiver_drained(
    heap: shmipc.Heap,
) -> None:
    tx, rx = heap.channel("c"), heap.channel("c")
    for i in range(3):
        tx.send(bytes([i]))
    tx.close()
    assert [bytes(b) for b in rx] == [b"\x00", b"\x01", b"\x02"]
    with pytest.raises(EOFError) as e:
        rx.recv(timeout=5)
    assert not isinstance(e.value, shmipc.PeerDiedError)
    assert rx.poll(), "recv would not block (it raises)"
    with pytest.raises(BrokenPipeError):
        heap.channel("c").send(b"late")


def test_a_channel_is_a_context_manager_and_close_is_idempotent(heap: shmipc.Heap) -> None:
    with heap.channel("c") as ch:
        ch.send(b"x")
    assert ch.closed
    ch.close()
    for op in (lambda: ch.send(b"y"), lambda: ch.recv(timeout=0), lambda: len(ch), ch.poll):
        with pytest.raises(ValueError, match="is closed"):
            op()
    with pytest.raises(ValueError, match="is closed"):
        with ch:
            pass


def test_timeouts_on_an_empty_and_on_a_full_channel(heap: shmipc.Heap) -> None:
    tx, rx = heap.channel("c", capacity=2), heap.channel("c")
    with pytest.raises(TimeoutError):
        rx.recv(timeout=0)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        rx.recv(timeout=0.1)
    assert time.monotonic() - t0 >= 0.09
    tx.send(b"1", timeout=0)
    tx.send(b"2", timeout=0)
    base = allocations(heap)
    with pytest.raises(TimeoutError):
        tx.send(b"3", timeout=0.05)
    blk = heap.allocate(8)
    with pytest.raises(TimeoutError):
        tx.send(blk, timeout=0)
    assert not blk.released, "a Block that could not be sent stays the caller's"
    blk.release()
    assert allocations(heap) == base, "a failed send leaks nothing"
    with pytest.raises(TimeoutError):
        tx.send_many([b"a", b"b"], timeout=0.01)


def test_send_blocks_while_full_until_the_receiver_makes_room(heap: shmipc.Heap) -> None:
    tx, rx = heap.channel("c", capacity=1), heap.channel("c")
    tx.send(b"first")
    threading.Timer(0.1, lambda: rx.recv_bytes(timeout=5)).start()
    tx.send(b"second", timeout=10)  # returns once the timer thread received "first"
    assert rx.recv_bytes(timeout=5) == b"second"


def test_a_second_sender_or_receiver_in_one_process_is_channel_busy(heap: shmipc.Heap) -> None:
    a, b = heap.channel("c"), heap.channel("c")
    a.send(b"x")
    with pytest.raises(shmipc.ChannelBusyError):
        b.send(b"y")
    r1, r2 = heap.channel("c"), heap.channel("c")
    r1.recv(timeout=5)
    with pytest.raises(shmipc.ChannelBusyError):
        r2.recv(timeout=0)
    a.release()
    b.send(b"y")  # the role was given up
    r1.close()
    assert r2.recv_bytes(timeout=5) == b"y"


def test_a_sender_handle_cannot_receive(heap: shmipc.Heap) -> None:
    ch = heap.channel("c")
    ch.send(b"x")
    with pytest.raises(ValueError, match="sender"):
        ch.recv(timeout=0)


@pytest.mark.parametrize(
    ("args", "exc"),
    [
        (("c", 0), ValueError),
        (("c", -1), ValueError),
        (("c", 1 << 30), ValueError),
        (("c", 2.5), TypeError),
        (("c", True), TypeError),
        ((b"c", 4), TypeError),
        (("", 4), ValueError),
        (("x" * 100, 4), ValueError),
    ],
)
def test_bad_arguments_raise_clear_errors(heap: shmipc.Heap, args: tuple, exc: type) -> None:
    with pytest.raises(exc):
        heap.channel(*args)


def test_a_name_of_another_object_is_not_a_channel(heap: shmipc.Heap) -> None:
    heap.shared_block("state", 64)
    with pytest.raises(ValueError, match="not a channel"):
        heap.channel("state")


def test_bad_spin_and_max_values_are_refused(heap: shmipc.Heap) -> None:
    ch = heap.channel("c")
    with pytest.raises(ValueError):
        ch.spin = -1
    with pytest.raises(TypeError):
        ch.spin = "fast"  # type: ignore[assignment]
    ch.spin = True
    assert ch.spin > 0
    ch.spin = False
    assert ch.spin == 0
    with pytest.raises(ValueError):
        ch.recv_many(0)


def test_send_many_and_recv_many_keep_order(heap: shmipc.Heap) -> None:
    tx, rx = heap.channel("c", capacity=64), heap.channel("c")
    msgs = [w.payload(i) for i in range(500)]
    got: list[bytes] = []

    def consume() -> None:
        while len(got) < len(msgs):
            got.extend(rx.recv_many(100, timeout=30))

    t = threading.Thread(target=consume)
    t.start()
    assert tx.send_many(msgs, timeout=30) == 500
    t.join(60)
    assert got == msgs
    assert tx.send_many([], timeout=0) == 0


def test_heap_channels_reports_every_channel(heap: shmipc.Heap) -> None:
    tx = heap.channel("one", capacity=8)
    tx.send(b"a")
    heap.channel("two", capacity=3)
    info = heap.channels()
    assert set(info) == {"one", "two"}
    assert set(info["one"]) == {"capacity", "queued", "sender_alive", "receiver_alive"}
    assert info["one"]["capacity"] == 8 and info["one"]["queued"] == 1
    assert info["one"]["sender_alive"] is True and info["one"]["receiver_alive"] is False
    assert info["two"]["queued"] == 0 and info["two"]["sender_alive"] is False
    tx.close()
    assert heap.channels()["one"]["sender_alive"] is False


def test_ctrl_c_interrupts_a_blocking_recv(heap: shmipc.Heap) -> None:
    rx = heap.channel("c")
    rx.spin = 0
    timer = threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):  # not TimeoutError: the interrupt ended the wait
        rx.recv(timeout=30)
    timer.join()
    # The handle stays usable after the interrupt.
    with pytest.raises(TimeoutError):
        rx.recv(timeout=0)


def test_closing_a_handle_wakes_its_thread_blocked_in_recv(heap: shmipc.Heap) -> None:
    rx = heap.channel("c")
    rx.spin = 0
    errors: list[BaseException] = []

    def body() -> None:
        try:
            rx.recv(timeout=30)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=body)
    t.start()
    time.sleep(0.1)
    rx.close()
    t.join(10)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ValueError)


def test_closing_the_heap_closes_its_channels() -> None:
    h = shmipc.Heap.anonymous(1 << 20)
    ch = h.channel("c")
    ch.send(b"x")
    h.close()
    assert ch.closed
    with pytest.raises(ValueError, match="closed"):
        ch.send(b"y")
    ch.close()


def test_plain_pickle_of_a_channel_of_an_anonymous_heap_is_refused(heap: shmipc.Heap) -> None:
    with pytest.raises(TypeError):
        pickle.dumps(heap.channel("c"))


def test_a_channel_of_a_named_heap_pickles_by_name(name: str) -> None:
    with shmipc.Heap.create(name, size=1 << 20) as h:
        ch = h.channel("c", capacity=7)
        ch.send(b"hi")
        copy = pickle.loads(pickle.dumps(ch))
        assert copy.name == "c" and copy.capacity == 7 and copy.role is None
        assert copy.recv_bytes(timeout=5) == b"hi"
        copy.close()
        copy.heap.close()


# --- across processes ---------------------------------------------------------------------


def test_two_processes_pass_every_item_once_and_in_order(
    heap: shmipc.Heap, spawn: mp.context.SpawnContext
) -> None:
    count = 5000
    rx = heap.channel("fuzz", capacity=37)
    rx.spin = 0
    p = spawn.Process(target=w.fuzz_sender, args=(heap, "fuzz", count, 1234))
    p.start()
    got = 0
    for i, blk in enumerate(rx):
        assert bytes(blk) == w.payload(i), f"record {i}"
        blk.release()
        got += 1
    join_all([p])
    assert p.exitcode == 0
    assert got == count


def test_a_second_sender_in_another_process_is_channel_busy(
    heap: shmipc.Heap, spawn: mp.context.SpawnContext
) -> None:
    tx = heap.channel("c")
    tx.send(b"mine")
    q = spawn.Queue()
    p = spawn.Process(target=w.try_send, args=(heap, "c", q))
    p.start()
    assert q.get(timeout=60) == "ChannelBusyError"
    join_all([p])
    tx.release()
    p = spawn.Process(target=w.try_send, args=(heap, "c", q))
    p.start()
    assert q.get(timeout=60) == "ok", "a released role can be taken by another process"
    join_all([p])


def test_a_receiver_in_another_process_gets_a_channel_passed_as_argument(
    heap: shmipc.Heap, spawn: mp.context.SpawnContext
) -> None:
    tx = heap.channel("c")
    q = spawn.Queue()
    p = spawn.Process(target=w.recv_from_pickled_channel, args=(tx, q))
    p.start()
    tx.send(b"through the channel")
    assert q.get(timeout=60) == b"through the channel"
    join_all([p])


def test_an_array_crosses_processes_with_dtype_and_shape(
    heap: shmipc.Heap, spawn: mp.context.SpawnContext
) -> None:
    q = spawn.Queue()
    p = spawn.Process(target=w.recv_array_and_report, args=(heap, "c", q))
    p.start()
    arr = np.arange(1 << 20, dtype=np.float32).reshape(1024, 1024)
    heap.channel("c").send_array(arr, timeout=30)
    assert q.get(timeout=60) == ("float32", (1024, 1024), float(arr.sum()), True)
    join_all([p])


def test_sigkill_of_the_sender_mid_stream_ends_the_receivers_wait_with_peer_died(
    heap: shmipc.Heap, spawn: mp.context.SpawnContext
) -> None:
    rx = heap.channel("c", capacity=100)
    rx.spin = 0
    q = spawn.Queue()
    p = spawn.Process(target=w.send_then_hang, args=(heap, "c", 10, q))
    p.start()
    assert q.get(timeout=60) == "sent"
    os.kill(p.pid, signal.SIGKILL)  # type: ignore[arg-type]
    join_all([p])
    assert [rx.recv_bytes(timeout=10) for _ in range(10)] == [w.payload(i) for i in range(10)]
    with pytest.raises(shmipc.PeerDiedError):  # not TimeoutError: the death ended the wait
        rx.recv(timeout=30)
    assert heap.channels()["c"]["sender_alive"] is False
    with pytest.raises(EOFError):  # PeerDiedError is an EOFError: iteration code sees it
        rx.recv(timeout=5)


def test_sigkill_of_the_receiver_ends_the_senders_wait_and_reclaims_its_blocks(
    heap: shmipc.Heap, spawn: mp.context.SpawnContext
) -> None:
    tx = heap.channel("c", capacity=2)
    tx.spin = 0
    before = heap.stats()["used"]
    q = spawn.Queue()
    p = spawn.Process(target=w.take_then_hang, args=(heap, "c", 3, q))
    p.start()
    for _ in range(2):
        tx.send(np.zeros(1 << 20, np.uint8), timeout=30)
    tx.send_array(np.zeros(1 << 20, np.uint8), timeout=30)
    assert q.get(timeout=60) == 3 << 20
    assert heap.stats()["used"] >= before + (3 << 20), "the receiver holds three blocks"
    tx.send(b"a", timeout=5)
    tx.send(b"b", timeout=5)  # the ring is full now
    os.kill(p.pid, signal.SIGKILL)  # type: ignore[arg-type]
    join_all([p])
    with pytest.raises(shmipc.PeerDiedError):  # not TimeoutError: the death ended the wait
        tx.send(b"c", timeout=30)
    assert heap.stats()["used"] < before + (1 << 20), "the dead receiver's blocks were reclaimed"
    # A new receiver takes over and gets what was still queued.
    rx = heap.channel("c")
    assert rx.recv_bytes(timeout=5) == b"a"
    assert heap.channels()["c"]["receiver_alive"] is True


def test_ctrl_c_interrupts_a_send_blocked_on_a_full_channel(heap: shmipc.Heap) -> None:
    tx = heap.channel("c", capacity=1)
    tx.spin = 0
    tx.send(b"fill")
    timer = threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        tx.send(b"blocked", timeout=30)
    timer.join()
    assert len(tx) == 1, "the interrupted record was not sent"


def test_heap_channels_sees_the_liveness_of_endpoints_in_other_processes(
    heap: shmipc.Heap, spawn: mp.context.SpawnContext
) -> None:
    q = spawn.Queue()
    p = spawn.Process(target=w.send_then_hang, args=(heap, "c", 1, q))
    p.start()
    assert q.get(timeout=60) == "sent"
    info = heap.channels()["c"]
    assert info["sender_alive"] is True and info["queued"] == 1
    os.kill(p.pid, signal.SIGKILL)  # type: ignore[arg-type]
    join_all([p])
    assert heap.channels()["c"]["sender_alive"] is False
    # A new sender may take the dead one's role.
    heap.channel("c").send(b"new sender")
    rx = heap.channel("c")
    assert rx.recv_bytes(timeout=5) == w.payload(0)
    assert rx.recv_bytes(timeout=5) == b"new sender"
