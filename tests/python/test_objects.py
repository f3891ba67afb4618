"""Objects with out-of-band buffers: MessageQueue.put/get and Channel.send_obj/recv_obj."""

from __future__ import annotations

import gc
import importlib
import os
import pickle
import queue
import signal
import struct
from typing import Any

import numpy as np
import pytest

import shmipc
from shmipc import _objects

import workers_objects as wo
from testutil import join_all

REQUIRED = os.environ.get("SHMIPC_REQUIRE_EXTRAS") == "1"


def require(module: str) -> Any:
    if REQUIRED:
        return importlib.import_module(module)  # an ImportError fails the run
    return pytest.importorskip(module, reason=f"{module} is not installed: pip install '.[test]'")


def views_a_block(a: Any) -> bool:
    """True if the array's base chain reaches a shmipc Block (zero copy on receive)."""
    obj = a
    for _ in range(16):
        if isinstance(obj, shmipc.Block):
            return True
        obj = getattr(obj, "base", None) if not isinstance(obj, memoryview) else obj.obj
        if obj is None:
            return False
    return False


def allocations(q: shmipc.MessageQueue) -> int:
    gc.collect()
    stats = q.oob_stats
    assert stats is not None
    return stats["allocations"]


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
            assert np.array_equal(a[k], b[k])
        else:
            assert a[k] == b[k]


# --- MessageQueue -----------------------------------------------------------------------------


def test_a_dict_of_arrays_larger_than_max_message_size_arrives_as_views_of_shared_memory(
    name: str,
) -> None:
    with shmipc.MessageQueue.create(name, maxsize=4, max_message_size=4096) as q:
        base = allocations(q)
        sent = wo.big_dict(1)
        q.put(sent, timeout=5)
        got = q.get(timeout=5)
        assert_same(sent, got)
        assert views_a_block(got["img"]) and views_a_block(got["f"])
        assert got["img"].flags.writeable
        got["img"][0, 0, 0] = 1  # the receiver's own memory
        assert type(got["raw"]) is bytes  # bytes arrive as bytes (their block is freed at once)
        assert allocations(q) == base + 2
        del got
        assert allocations(q) == base


def test_bytes_bytearray_and_picklebuffer_keep_their_types(name: str) -> None:
    with shmipc.MessageQueue.create(name, maxsize=4, max_message_size=1024) as q:
        big = os.urandom(200_000)
        q.put([big, bytearray(big), (big,)], timeout=5)
        a, b, (c,) = q.get(timeout=5)
        assert type(a) is bytes and type(b) is bytearray and type(c) is bytes
        assert a == big and b == big and c == big
        q.put(pickle.PickleBuffer(bytearray(big)), timeout=5)
        pb = q.get(timeout=5)
        assert bytes(memoryview(pb)) == big


def test_shared_ndarrays_go_through_queues_and_channels_as_copies(name: str) -> None:
    a = shmipc.full((300, 300), 4.0)
    with shmipc.MessageQueue.create(name, maxsize=4, max_message_size=1024) as q:
        q.put({"a": a, "v": a[::2]}, timeout=5)
        got = q.get(timeout=5)
        assert np.array_equal(got["a"], a) and np.array_equal(got["v"], a[::2])
        got["a"][0, 0] = 1  # a copy: the sender's array is untouched
        assert a[0, 0] == 4.0
    with shmipc.Heap.anonymous(8 << 20) as heap:
        tx, rx = heap.channel("o"), heap.channel("o")
        tx.send_obj(a, timeout=5)
        assert np.array_equal(rx.recv_obj(timeout=5), a)
        tx.close()
        rx.close()


def test_arrays_got_from_the_queue_are_put_again_without_a_copy(name: str) -> None:
    with shmipc.MessageQueue.create(name, maxsize=4, max_message_size=1024) as q:
        q.put({"a": np.arange(100_000)}, timeout=5)
        a = q.get(timeout=5)["a"]
        a += 1  # the consumer's own memory
        address = a.__array_interface__["data"][0]
        q.put({"a": a}, timeout=5)  # it is the sole view of a companion block: it moves
        assert not a.flags.writeable
        b = q.get(timeout=5)["a"]
        assert b.__array_interface__["data"][0] == address
        assert np.array_equal(b, np.arange(1, 100_001))
        del a, b
        assert allocations(q) == 0


def test_arrays_produced_in_the_queue_heap_move_to_another_process_without_a_copy(
    name: str, spawn: Any
) -> None:
    with shmipc.MessageQueue.create(name, maxsize=8, max_message_size=1024) as q:
        assert isinstance(q.oob_heap, shmipc.Heap)
        out, ack = spawn.Queue(), spawn.Queue()
        p = spawn.Process(target=wo.produce_in_the_queue_heap, args=(name, 3, out, ack))
        p.start()
        try:
            for i in range(3):
                got = q.get(timeout=60)
                assert got["i"] == i
                assert views_a_block(got["a"]) and got["a"].nbytes == 1 << 20
                assert np.all(got["a"] == i)
                before, after = out.get(timeout=60)
                assert after == before, "put allocated a block: the array was copied"
                del got  # frees the block; only then may the child count again
                ack.put(None)
        finally:
            join_all([p], timeout=60)
        assert p.exitcode == 0
        assert allocations(q) == 0


def test_a_queue_without_companion_heap_has_no_oob_heap(name: str) -> None:
    with shmipc.MessageQueue.create(name, maxsize=4, oob_size=0) as q:
        assert q.oob_heap is None
    with pytest.raises(ValueError):
        _ = q.oob_heap  # closed


def test_small_objects_stay_in_band_and_plain_pickles_still_decode(name: str) -> None:
    with shmipc.MessageQueue.create(name, maxsize=4, max_message_size=1024) as q:
        q.put({"a": np.arange(10), "s": "x"}, timeout=5)
        got = q.get(timeout=5)
        assert not views_a_block(got["a"]) and got["s"] == "x"
        q.put_bytes(pickle.dumps([1, 2, 3], 5), timeout=5)
        assert q.get(timeout=5) == [1, 2, 3]
        assert allocations(q) == 0


def test_an_in_band_part_beyond_max_message_size_is_value_error_and_frees_nothing_held(
    name: str,
) -> None:
    with shmipc.MessageQueue.create(name, maxsize=4, max_message_size=256) as q:
        with pytest.raises(ValueError, match="in-band part"):
            q.put({"arr": np.zeros(100_000), "text": "y" * 1000}, timeout=5)
        assert allocations(q) == 0
        assert q.qsize() == 0


def test_a_full_queue_gives_back_the_blocks_of_the_message_it_refused(name: str) -> None:
    with shmipc.MessageQueue.create(name, maxsize=1, max_message_size=1024) as q:
        q.put(np.ones(100_000), timeout=5)
        with pytest.raises(queue.Full):
            q.put(np.ones(100_000), timeout=0.05)
        with pytest.raises(queue.Full):
            q.put_nowait(np.ones(100_000))
        assert allocations(q) == 1
        assert q.get(timeout=5).sum() == 100_000
        assert allocations(q) == 0


def test_a_full_companion_heap_is_memory_error_and_the_queue_stays_usable(name: str) -> None:
    with shmipc.MessageQueue.create(
        name, maxsize=4, max_message_size=1024, oob_size=1 << 20, oob_max_size=2 << 20
    ) as q:
        with pytest.raises(MemoryError):
            q.put({"a": np.zeros(1 << 20), "b": np.zeros(1 << 19)}, timeout=5)  # 12 MiB
        assert allocations(q) == 0 and q.qsize() == 0
        q.put(np.ones(100_000), timeout=5)
        assert q.get(timeout=5).sum() == 100_000


def test_a_queue_without_companion_heap_sends_in_band(name: str) -> None:
    with shmipc.MessageQueue.create(name, maxsize=2, max_message_size=1 << 20, oob_size=0) as q:
        assert q.oob_stats is None
        assert not os.path.exists(f"/dev/shm/{name}.oob")
        q.put(np.arange(100_000), timeout=5)
        assert np.array_equal(q.get(timeout=5), np.arange(100_000))
        with pytest.raises(ValueError):
            q.put(np.zeros(1 << 20), timeout=5)


def test_forged_buffer_references_are_corrupt_segment_errors(name: str) -> None:
    with shmipc.MessageQueue.create(name, maxsize=4, max_message_size=1024) as q:
        head = struct.pack("<4sBI", b"\x00SHO", 1, 1)
        q.put_bytes(head + struct.pack("<QQQ", 12345, 0, 100) + pickle.dumps(None), timeout=5)
        with pytest.raises(shmipc.CorruptSegmentError):
            q.get(timeout=5)
        q.put_bytes(head, timeout=5)  # announces a reference it does not hold
        with pytest.raises(shmipc.CorruptSegmentError):
            q.get(timeout=5)
        # A reference taken twice (a replayed message) is refused the second time.
        q.put(np.ones(100_000), timeout=5)
        raw = q.get_bytes(timeout=5)
        q.put_bytes(raw, timeout=5)
        q.put_bytes(raw, timeout=5)
        first = q.get(timeout=5)
        with pytest.raises(shmipc.CorruptSegmentError, match="not held"):
            q.get(timeout=5)
        assert first.sum() == 100_000


def test_blocks_outlive_the_producer_that_put_them(name: str, spawn: Any) -> None:
    with shmipc.MessageQueue.create(name, maxsize=8, max_message_size=4096) as q:
        p = spawn.Process(target=wo.put_dicts, args=(name, [1, 2, 3]))
        p.start()
        join_all([p], timeout=60)
        assert p.exitcode == 0
        for s in (1, 2, 3):
            assert_same(wo.big_dict(s), q.get(timeout=10))
        assert allocations(q) == 0


def test_a_killed_consumers_buffers_are_reclaimed(name: str, spawn: Any) -> None:
    with shmipc.MessageQueue.create(name, maxsize=8, max_message_size=4096) as q:
        q.put(wo.big_dict(4), timeout=5)
        ready = spawn.Event()
        p = spawn.Process(target=wo.get_and_hold, args=(name, ready))
        p.start()
        try:
            assert ready.wait(60)
            assert allocations(q) == 2  # the consumer holds img and f
        finally:
            os.kill(p.pid, signal.SIGKILL)
            join_all([p], timeout=30)
        assert allocations(q) == 0  # stats() reaps the dead client's blocks


def test_persistent_queue_and_its_companion_heap_go_with_unlink(name: str) -> None:
    q = shmipc.MessageQueue.create(name, maxsize=2, max_message_size=1024, persistent=True)
    q.put(np.arange(50_000), timeout=5)
    q.close()
    with shmipc.MessageQueue.attach(name) as again:
        assert np.array_equal(again.get(timeout=5), np.arange(50_000))
    shmipc.unlink(name)
    assert not os.path.exists(f"/dev/shm/{name}.oob")


def test_pandas_dataframes_travel_out_of_band(name: str) -> None:
    pd = require("pandas")
    df = pd.DataFrame({"x": np.arange(200_000), "y": np.linspace(0, 1, 200_000), "k": "a"})
    with shmipc.MessageQueue.create(name, maxsize=2, max_message_size=64 << 10) as q:
        q.put(df, timeout=5)
        got = q.get(timeout=5)
        pd.testing.assert_frame_equal(got, df)
        assert allocations(q) >= 1
        del got
        assert allocations(q) == 0


def test_pyarrow_tables_travel_out_of_band(name: str) -> None:
    pa = require("pyarrow")
    t = pa.table({"x": np.arange(200_000), "s": ["v"] * 200_000})
    with shmipc.MessageQueue.create(name, maxsize=2, max_message_size=64 << 10) as q:
        q.put(t, timeout=5)
        got = q.get(timeout=5)
        assert got.equals(t)
        assert allocations(q) >= 1
        del got
        assert allocations(q) == 0


# --- Channel ------------------------------------------------------------------------------


def heap_allocations(heap: shmipc.Heap) -> int:
    gc.collect()
    return heap.stats()["allocations"]


def test_send_obj_and_recv_obj_round_trip_with_views_of_the_heap() -> None:
    with shmipc.Heap.anonymous(64 << 20) as heap:
        tx, rx = heap.channel("o"), heap.channel("o")
        base = heap_allocations(heap)
        sent = wo.big_dict(7)
        tx.send_obj(sent, timeout=5)
        tx.send_obj("small", timeout=5)
        got = rx.recv_obj(timeout=5)
        assert_same(sent, got)
        assert views_a_block(got["img"]) and got["img"].flags.writeable
        assert rx.recv_obj(timeout=5) == "small"
        del got
        assert heap_allocations(heap) == base
        with pytest.raises(TimeoutError):
            rx.recv_obj(timeout=0.05)
        tx.close()
        rx.close()


def test_the_sole_view_of_a_block_of_the_heap_moves_without_a_copy() -> None:
    with shmipc.Heap.anonymous(16 << 20) as heap:
        tx, rx = heap.channel("o"), heap.channel("o")
        blk = heap.allocate(1 << 20)
        arr = blk.as_array(np.float32)
        arr[:] = 3
        address = arr.__array_interface__["data"][0]
        tx.send_obj({"a": arr}, timeout=5)
        assert blk.released and not arr.flags.writeable
        got = rx.recv_obj(timeout=5)["a"]
        assert got.__array_interface__["data"][0] == address  # the same memory
        assert float(got.sum()) == 3 * (1 << 18)
        del arr, got
        tx.close()
        rx.close()


def test_a_record_not_sent_by_send_obj_is_corrupt_and_leftovers_are_dropped() -> None:
    with shmipc.Heap.anonymous(16 << 20) as heap:
        tx, rx = heap.channel("o"), heap.channel("o")
        base = heap_allocations(heap)
        tx.send(b"plain", timeout=5)
        with pytest.raises(shmipc.CorruptSegmentError):
            rx.recv_obj(timeout=5)
        # A buffer record whose object record never came (a send_obj cut short).
        tx._send_bytes(b"x" * 100, _objects.buf_meta(0, 100), 5)
        tx.send_obj([np.ones(100_000)], timeout=5)
        (got,) = rx.recv_obj(timeout=5)
        assert got.sum() == 100_000
        del got
        assert heap_allocations(heap) == base
        tx.close()
        rx.close()


def test_objects_cross_processes_and_the_heap_reclaims_a_killed_receiver(spawn: Any) -> None:
    with shmipc.Heap.anonymous(64 << 20) as heap:
        p = spawn.Process(target=wo.channel_send_objs, args=(heap, [1, 2]))
        p.start()
        rx = heap.channel("objs")
        for s in (1, 2):
            assert_same(wo.big_dict(s), rx.recv_obj(timeout=60))
        join_all([p], timeout=60)
        rx.close()
        with heap.channel("held") as tx:
            base = heap_allocations(heap)
            tx.send_obj(wo.big_dict(3), timeout=5)
            ready = spawn.Event()
            c = spawn.Process(target=wo.channel_recv_and_hold, args=(heap, ready))
            c.start()
            try:
                assert ready.wait(60)
                assert heap_allocations(heap) >= base + 2  # the receiver holds img and f
            finally:
                os.kill(c.pid, signal.SIGKILL)
                join_all([c], timeout=30)
            assert heap_allocations(heap) == base


def test_objects_from_2_producers_reach_2_consumers_exactly_once_and_free_their_blocks(
    name: str, spawn: Any
) -> None:
    n_prod, per = 2, 150
    with shmipc.MessageQueue.create(name, maxsize=16, max_message_size=1024) as q:
        out = spawn.Queue()
        cons = [spawn.Process(target=wo.get_and_check_until_none, args=(name, out)) for _ in "ab"]
        prods = [
            spawn.Process(target=wo.put_small_dicts, args=(name, t, per)) for t in range(n_prod)
        ]
        for p in cons + prods:
            p.start()
        join_all(prods, timeout=120)
        for _ in cons:
            q.put(None, timeout=60)
        got = out.get(timeout=120) + out.get(timeout=120)
        join_all(cons, timeout=60)
        assert all(p.exitcode == 0 for p in cons + prods)
        assert sorted(got) == [(t, i) for t in range(n_prod) for i in range(per)]
        assert allocations(q) == 0
