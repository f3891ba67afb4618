"""heap.dict(name): a MutableMapping shared by processes, atomic per operation, crash safe."""

from __future__ import annotations

import os
import pickle
import random
import signal
import time
from collections.abc import MutableMapping
from typing import Any

import numpy as np
import pytest

import shmipc

import workers_dict as W
from testutil import join_all

ARRAYS = [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.arange(10, dtype=">i2"),  # byte order kept
    np.zeros((0, 3), dtype=np.uint8),  # empty
    np.array(3.5),  # 0-d
    np.arange(24, dtype=np.int64).reshape(2, 3, 4)[:, ::2, 1:],  # not contiguous
    np.array([(1, 2.0), (3, 4.0)], dtype=[("x", "<i4"), ("y", "<f8")]),  # structured
    np.array(["2024-01-02"], dtype="M8[D]"),  # no buffer protocol for this dtype
    np.array([1 + 2j], dtype=np.complex128),
    np.array([True, False]),
    np.array(["ab", "c"], dtype="U2"),
]


@pytest.fixture
def heap(name: str) -> Any:
    with shmipc.Heap.create(name, size=16 << 20) as h:
        yield h


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"\x00bytes\xff",
        "",
        "héllo wörld ✓",
        0,
        -1,
        2**63 - 1,
        -(2**63),
        2**64,
        -(2**200),
        0.5,
        float("inf"),
        -0.0,
        True,
        False,
        b"x" * 100_000,
    ],
)
def test_scalar_values_round_trip_with_their_type(heap: shmipc.Heap, value: Any) -> None:
    d = heap.dict("d")
    d["k"] = value
    got = d["k"]
    assert type(got) is type(value)
    assert got == value
    if isinstance(value, float):
        assert np.signbit(got) == np.signbit(value)


def test_nan_round_trips() -> None:
    with shmipc.Heap.anonymous(1 << 20) as h:
        d = h.dict("d")
        d["nan"] = float("nan")
        assert np.isnan(d["nan"])


@pytest.mark.parametrize("arr", ARRAYS, ids=lambda a: f"{a.dtype}-{a.shape}")
def test_arrays_round_trip_as_writable_copies(heap: shmipc.Heap, arr: np.ndarray) -> None:
    d = heap.dict("d")
    d["a"] = arr
    got = d["a"]
    assert isinstance(got, np.ndarray)
    assert got.dtype == arr.dtype and got.shape == arr.shape
    np.testing.assert_array_equal(got, arr)
    assert got.flags.writeable and got.flags.c_contiguous
    if got.size:
        got.reshape(-1)[0] = got.reshape(-1)[-1]  # a copy: the stored value is unchanged
        np.testing.assert_array_equal(d["a"], arr)


def test_large_array_round_trips(heap: shmipc.Heap) -> None:
    d = heap.dict("d")
    arr = np.random.default_rng(0).random((1024, 1024))  # 8 MiB: copied without the GIL
    d["big"] = arr
    np.testing.assert_array_equal(d["big"], arr)
    del d["big"]
    d._check_invariants()


def test_bytes_like_and_numpy_scalars_are_stored_as_python_values(heap: shmipc.Heap) -> None:
    d = heap.dict("d")
    d["ba"] = bytearray(b"abc")
    d["mv"] = memoryview(b"xyz")
    d["i"] = np.int32(7)
    d["f"] = np.float32(0.5)
    d["b"] = np.bool_(True)
    assert d["ba"] == b"abc" and type(d["ba"]) is bytes
    assert d["mv"] == b"xyz"
    assert d["i"] == 7 and type(d["i"]) is int
    assert d["f"] == 0.5 and type(d["f"]) is float
    assert d["b"] is True


def test_it_is_a_mutable_mapping(heap: shmipc.Heap) -> None:
    d = heap.dict("d")
    assert isinstance(d, MutableMapping)
    assert len(d) == 0 and list(d) == [] and not d
    d.update({"a": 1, "b": "two"}, c=3.0)
    assert len(d) == 3 and sorted(d) == ["a", "b", "c"]
    assert "a" in d and "z" not in d and 1 not in d
    assert d.get("a") == 1 and d.get("z") is None and d.get("z", 5) == 5
    assert d.setdefault("a", 100) == 1 and d.setdefault("n", 100) == 100 and d["n"] == 100
    assert d.setdefault("a") == 1
    with pytest.raises(TypeError):
        d.setdefault("absent")
    assert d.pop("n") == 100 and d.pop("n", "gone") == "gone"
    with pytest.raises(KeyError):
        d.pop("n")
    assert dict(d.items()) == {"a": 1, "b": "two", "c": 3.0}
    assert sorted(d.keys()) == ["a", "b", "c"] and sorted(map(str, d.values())) == [
        "1",
        "3.0",
        "two",
    ]
    assert d == {"a": 1, "b": "two", "c": 3.0} and d != {"a": 1}
    assert d.copy() == {"a": 1, "b": "two", "c": 3.0}
    k, v = d.popitem()
    assert k not in d and len(d) == 2
    with pytest.raises(KeyError) as ei:
        d["missing"]
    assert ei.value.args == ("missing",)
    with pytest.raises(KeyError):
        del d["missing"]
    d.clear()
    assert len(d) == 0
    with pytest.raises(KeyError):
        d.popitem()
    assert "len=0" in repr(d)


def test_many_keys_grow_the_table_and_deletes_are_reused(heap: shmipc.Heap) -> None:
    d = heap.dict("d")
    for i in range(5000):
        d[f"key-{i}"] = i
    for i in range(0, 5000, 2):
        del d[f"key-{i}"]
    for i in range(5000, 7000):
        d[f"key-{i}"] = -i
    assert len(d) == 4500
    assert d["key-1"] == 1 and d["key-6999"] == -6999 and "key-0" not in d
    d._check_invariants()
    used_before = heap.stats()["allocations"]
    d.clear()
    assert heap.stats()["allocations"] < used_before


def test_same_name_is_the_same_dict_and_names_are_checked(heap: shmipc.Heap) -> None:
    a, b = heap.dict("cfg"), heap.dict("cfg")
    a["x"] = 1
    assert b["x"] == 1
    assert heap.dict("other").get("x") is None
    with pytest.raises(ValueError):
        heap.dict("")
    with pytest.raises(ValueError):
        heap.dict("n" * 64)
    with pytest.raises(TypeError):
        heap.dict(3)  # type: ignore[arg-type]
    heap.shared_block("blk", 16)
    with pytest.raises(ValueError):
        heap.dict("blk")  # a name used by another kind of object


def test_bad_keys_and_values_raise_clear_errors(heap: shmipc.Heap) -> None:
    d = heap.dict("d")
    with pytest.raises(TypeError, match="keys of a SharedDict are str"):
        d[1] = 2  # type: ignore[index]
    with pytest.raises(TypeError, match="keys of a SharedDict are str"):
        d[b"k"]  # type: ignore[index]
    with pytest.raises(TypeError, match="not NoneType"):
        d["k"] = None  # type: ignore[assignment]
    with pytest.raises(TypeError, match="not list"):
        d["k"] = [1, 2]  # type: ignore[assignment]
    with pytest.raises(TypeError, match="objects"):
        d["k"] = np.array([object()])
    with pytest.raises(UnicodeEncodeError):
        d["\ud800"] = 1
    assert len(d) == 0
    d._check_invariants()


def test_a_full_heap_raises_memory_error_and_the_dict_stays_usable() -> None:
    with shmipc.Heap.anonymous(1 << 20) as h:
        d = h.dict("d")
        d["small"] = 1
        with pytest.raises(MemoryError):
            d["huge"] = b"x" * (4 << 20)
        n = 0
        with pytest.raises(MemoryError):
            for n in range(1_000_000):  # noqa: B007
                d[f"k{n}"] = b"y" * 1000
        assert d["small"] == 1 and len(d) == n + 1
        d._check_invariants()
        d.clear()
        d["again"] = b"z" * 1000
        assert d["again"] == b"z" * 1000


def test_close_is_idempotent_and_use_after_close_is_a_value_error(name: str) -> None:
    h = shmipc.Heap.create(name, size=1 << 20)
    with h.dict("d") as d:
        d["a"] = 1
    d.close()
    assert d.closed and "closed" in repr(d)
    with pytest.raises(ValueError, match="SharedDict is closed"):
        d["a"]
    with pytest.raises(ValueError, match="SharedDict is closed"):
        len(d)
    with pytest.raises(ValueError, match="SharedDict is closed"):
        1 in d  # noqa: B015
    d2 = h.dict("d")
    h.close()
    with pytest.raises(ValueError, match="closed"):
        d2["a"]


def test_timeout_is_validated(heap: shmipc.Heap) -> None:
    d = heap.dict("d")
    assert d.timeout is None
    d.timeout = 0.5
    assert d.timeout == 0.5
    with pytest.raises(ValueError):
        d.timeout = -1


def test_pickles_by_heap_name(heap: shmipc.Heap) -> None:
    d = heap.dict("d")
    d["a"] = "b"
    d2 = pickle.loads(pickle.dumps(d))
    assert d2["a"] == "b" and d2.name == "d"
    d2.heap.close()


@pytest.mark.parametrize("anonymous", [False, True])
def test_entries_are_visible_across_processes(name: str, spawn: Any, anonymous: bool) -> None:
    h = shmipc.Heap.anonymous(4 << 20) if anonymous else shmipc.Heap.create(name, size=4 << 20)
    with h:
        d = h.dict("shared")
        d["from-parent"] = np.arange(5)
        q = spawn.Queue()
        items = {"s": "text", "i": 42, "f": 1.5, "b": b"raw", "a": np.eye(3)}
        p = spawn.Process(target=W.write_items, args=(h, "shared", items, q))
        p.start()
        seen = q.get(timeout=60)
        join_all([p])
        assert p.exitcode == 0
        np.testing.assert_array_equal(seen, np.arange(5))
        for k, v in items.items():
            np.testing.assert_array_equal(d[k], v)
        assert len(d) == 6


@pytest.mark.parametrize("anonymous", [False, True])
def test_a_dict_passed_to_a_child_is_the_same_dict(name: str, spawn: Any, anonymous: bool) -> None:
    h = shmipc.Heap.anonymous(4 << 20) if anonymous else shmipc.Heap.create(name, size=4 << 20)
    with h:
        d = h.dict("passed")
        d["x"] = 1
        q = spawn.Queue()
        p = spawn.Process(target=W.read_all, args=(d, q))
        p.start()
        assert q.get(timeout=60) == {"x": 1}
        join_all([p])
        assert d["from-child"] == 1


def test_concurrent_writers_lose_nothing(name: str, spawn: Any) -> None:
    with shmipc.Heap.create(name, size=16 << 20) as h:
        d = h.dict("w")
        procs = [
            spawn.Process(target=W.disjoint_writer, args=(name, "w", i, 500)) for i in range(3)
        ]
        for p in procs:
            p.start()
        join_all(procs)
        assert [p.exitcode for p in procs] == [0, 0, 0]
        assert len(d) == 3 * 500 + 1
        for i in range(3):
            assert d[f"w{i}-499"] == 499
        assert d["shared"] in {f"w{i}-499" for i in range(3)}
        d._check_invariants()


def test_sigkill_in_the_middle_of_operations_never_wedges_or_tears(name: str, spawn: Any) -> None:
    rng = random.Random(7)
    with shmipc.Heap.create(name, size=32 << 20) as h:
        d = h.dict("hammered")
        d.timeout = 30  # a wedged lock would fail here, not hang
        for rnd in range(6):
            ready = [spawn.Event() for _ in range(3)]
            procs = [
                spawn.Process(target=W.hammer, args=(name, "hammered", rnd * 10 + i, ready[i]))
                for i in range(3)
            ]
            for p in procs:
                p.start()
            for e in ready:
                assert e.wait(60)
            time.sleep(rng.uniform(0.05, 0.3))
            for p in procs:
                os.kill(p.pid, signal.SIGKILL)
            join_all(procs)
            assert all(p.exitcode == -signal.SIGKILL for p in procs)
            # Every operation still works and every entry is whole.
            for k, v in d.items():
                W.check_value(k, v)
            d._check_invariants()
            d["k0"] = W.value_for("k0", 1)
            assert d.pop("k0") == W.value_for("k0", 1)
        # Blocks of the killed processes come back; the dict's own are all accounted for.
        d.clear()
        stats = h.stats()
        assert stats["allocations"] <= 2, stats


@pytest.mark.parametrize("how", ["kill", "exit"])
def test_a_process_that_dies_holding_the_lock_does_not_wedge_the_others(
    name: str, spawn: Any, how: str
) -> None:
    with shmipc.Heap.create(name, size=4 << 20) as h:
        d = h.dict("d")
        d.timeout = 30  # a wedge fails the test instead of hanging it
        ready = spawn.Event()
        p = spawn.Process(target=W.hold_lock, args=(name, "d", ready, how))
        p.start()
        assert ready.wait(60)
        join_all([p])
        d["after"] = 1  # recovers the lock (EOWNERDEAD)
        assert d["after"] == 1 and d["holder"] == p.pid
        d._check_invariants()


def test_a_live_holder_makes_waits_time_out_and_ctrl_c_interrupts_them(
    name: str, spawn: Any
) -> None:
    import threading

    with shmipc.Heap.create(name, size=4 << 20) as h:
        d = h.dict("d")
        ready = spawn.Event()
        p = spawn.Process(target=W.hold_lock, args=(name, "d", ready, "sleep"))
        p.start()
        try:
            assert ready.wait(60)
            d.timeout = 0.2
            with pytest.raises(TimeoutError):
                d["x"]
            d.timeout = None  # wait forever, but Ctrl-C works
            timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
            timer.start()
            try:
                with pytest.raises(KeyboardInterrupt):
                    d["x"] = 1
            finally:
                timer.cancel()
        finally:
            p.kill()
            join_all([p])
        d.timeout = 30
        d["x"] = 2  # the killed holder's lock is recovered
        assert d["x"] == 2


def test_keys_of_any_length_and_script_work(heap: shmipc.Heap) -> None:
    d = heap.dict("d")
    keys = ["", "ключ", "鍵🔑", "k" * 100_000, "a\x00b"]
    for i, k in enumerate(keys):
        d[k] = i
    assert sorted(d) == sorted(keys)
    for i, k in enumerate(keys):
        assert d[k] == i
    assert "a" not in d and "a\x00" not in d
    d._check_invariants()
