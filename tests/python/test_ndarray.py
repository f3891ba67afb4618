"""shmipc.ndarray: arrays in shared memory that multiprocessing hands over as views."""

from __future__ import annotations

import gc
import multiprocessing as mp
import pickle
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import pytest

import shmipc

import workers_objects as wo
from testutil import join_all

METHODS = ["spawn", "forkserver", "fork"]


def test_constructors_make_shared_arrays_of_the_asked_shape_dtype_and_values() -> None:
    z = shmipc.zeros((3, 4), np.int32)
    assert isinstance(z, shmipc.ndarray) and z.shared
    assert z.shape == (3, 4) and z.dtype == np.int32 and not z.any()
    e = shmipc.empty(5, np.float32)
    assert e.shape == (5,) and e.dtype == np.float32
    f = shmipc.full((2, 2), 7.5)
    assert f.dtype == np.float64 and (f == 7.5).all()
    fo = shmipc.zeros((3, 4), order="F")
    assert fo.flags.f_contiguous and not fo.flags.c_contiguous
    src = np.arange(12).reshape(3, 4)
    a = shmipc.asarray(src)
    assert a.shared and np.array_equal(a, src) and not np.shares_memory(a, src)
    assert shmipc.asarray(a) is a
    assert shmipc.asarray(a, dtype=np.float32).dtype == np.float32
    assert shmipc.zeros_like(src).shape == (3, 4) and (shmipc.full_like(src, 2) == 2).all()
    assert shmipc.zeros(0).size == 0
    with pytest.raises(TypeError):
        shmipc.zeros(3, dtype=object)
    with pytest.raises(ValueError):
        shmipc.zeros((-1, 2))


def test_arithmetic_results_and_copies_are_private_memory() -> None:
    a = shmipc.full(10, 2.0)
    assert type(a + 1) is np.ndarray
    assert type(a.sum()) is np.float64
    assert a[2:5].shared and isinstance(a[2:5], shmipc.ndarray)
    c = a.copy()
    assert not c.shared
    assert np.array_equal(pickle.loads(pickle.dumps(c)), c)  # a copy pickles by value
    np.add(a, 1, out=a)
    assert a.shared and (a == 3).all()


def test_plain_pickle_of_a_shared_array_or_slice_is_a_clear_type_error() -> None:
    a = shmipc.zeros(100)
    for obj in (a, a[10:20], a[::2]):
        with pytest.raises(TypeError, match="outside multiprocessing"):
            pickle.dumps(obj)


@pytest.mark.parametrize("method", METHODS)
def test_pool_map_over_slices_writes_into_the_parents_array(method: str) -> None:
    ctx = mp.get_context(method)
    a = shmipc.zeros((1000, 50))
    with ctx.Pool(2) as pool:
        sums = pool.map(wo.add_one, [a[i : i + 100] for i in range(0, 1000, 100)])
    assert sums == [100 * 50.0] * 10
    assert (a == 1).all()


@pytest.mark.parametrize("method", METHODS)
def test_process_pool_executor_gets_strided_and_reversed_views(method: str) -> None:
    a = shmipc.zeros((40, 30), np.int64)
    with ProcessPoolExecutor(2, mp_context=mp.get_context(method)) as ex:
        list(ex.map(wo.add_one, [a[:, ::3], a[::-1, 1], a[5:10].T]))
    expected = np.zeros((40, 30), np.int64)
    expected[:, ::3] += 1
    expected[::-1, 1] += 1
    expected[5:10].T[...] += 1
    assert np.array_equal(a, expected)


def test_process_arguments_and_queues_carry_views_of_the_same_memory(spawn: Any) -> None:
    a = shmipc.zeros((6, 5), np.float32)
    q, done = spawn.Queue(), spawn.Queue()
    p = spawn.Process(target=wo.fill_from_queue, args=(q, done))
    p.start()
    q.put(a[2:4])
    assert done.get(timeout=60) == p.pid
    join_all([p], timeout=60)
    expected = np.zeros((6, 5), np.float32)
    expected[2:4] = np.arange(10).reshape(2, 5)
    assert np.array_equal(a, expected)
    with spawn.Pool(1) as pool:
        kind, shared, mappings = pool.apply(wo.describe, (a[1:],))
    assert (kind, shared, mappings) == ("ndarray", True, 1)


def test_a_pipe_carries_views_both_ways(spawn: Any) -> None:
    a = shmipc.zeros(8, np.uint8)
    parent, child = spawn.Pipe()
    p = spawn.Process(target=wo.pipe_echo, args=(child,))
    p.start()
    parent.send(a)
    back = parent.recv()
    assert (a == 5).all()
    back[...] = 9  # the slice that came back is the parent's memory again
    assert a.tolist() == [5, 9, 9, 5, 5, 5, 5, 5]
    parent.send("stop")
    join_all([p], timeout=60)


def test_many_slices_of_one_array_map_it_once_in_the_worker(spawn: Any) -> None:
    a = shmipc.zeros(1000)
    with spawn.Pool(1) as pool:
        n = pool.apply(wo.mappings_after, ([a[i : i + 10] for i in range(0, 1000, 10)],))
    assert n == 1
    assert (a == 7).all()


def test_memory_a_child_still_maps_is_never_reused_for_a_new_array(spawn: Any) -> None:
    parent, child = spawn.Pipe()
    p = spawn.Process(target=wo.hold_then_write, args=(child,))
    p.start()
    a = shmipc.zeros(1 << 16, np.uint8)
    parent.send(a)
    assert parent.recv() == "got"
    del a
    gc.collect()
    b = shmipc.zeros(1 << 16, np.uint8)  # same size: the pool's candidate
    parent.send("write now")
    assert parent.recv() == "wrote"
    join_all([p], timeout=60)
    assert not b.any()


@pytest.mark.parametrize("method", METHODS)
def test_a_slice_as_a_process_argument_is_a_view_of_the_parents_memory(method: str) -> None:
    ctx = mp.get_context(method)
    a = shmipc.zeros((4, 4), np.int32)
    p = ctx.Process(target=wo.add_one, args=(a[1:3, ::2],))
    p.start()
    join_all([p], timeout=60)
    assert p.exitcode == 0
    expected = np.zeros((4, 4), np.int32)
    expected[1:3, ::2] = 1
    assert np.array_equal(a, expected)
