"""shmipc.Heap and shmipc.Block (API.md section 2, heap part), with real processes."""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import pickle
import signal
import stat
import threading
import time

import numpy as np
import pytest

import shmipc

import workers_heap as W
from testutil import join_all

MiB = 1 << 20


# --- single process: allocation, blocks, errors ---------------------------------------------


def test_allocated_block_is_writable_shared_memory_with_buffer_protocol() -> None:
    with shmipc.Heap.anonymous(MiB) as heap:
        blk = heap.allocate(100)
        assert blk.nbytes == 100 and len(blk) == 100
        mv = memoryview(blk)
        assert not mv.readonly and mv.nbytes == 100
        mv[:3] = b"abc"
        assert bytes(blk)[:3] == b"abc"
        mv.release()
        blk.release()
        assert blk.released


def test_block_alignment_and_offsets() -> None:
    with shmipc.Heap.anonymous(MiB) as heap:
        for align in (1, 8, 64, 256, 4096):
            blk = heap.allocate(10, align=align)
            assert blk._address % align == 0
            assert blk.offset > 0
            blk.release()
        with pytest.raises(ValueError):
            heap.allocate(10, align=3)
        with pytest.raises(ValueError):
            heap.allocate(10, align=1 << 20)


def test_block_as_array_is_a_zero_copy_view() -> None:
    with shmipc.Heap.anonymous(MiB) as heap:
        blk = heap.allocate(64)
        arr = blk.as_array(np.float32, (4, 4))
        arr[:] = 1.5
        assert np.frombuffer(blk, np.float32)[5] == 1.5
        assert blk.as_array(np.uint8).shape == (64,)
        with pytest.raises(ValueError):
            blk.as_array(np.float64, (9,))
        with pytest.raises(TypeError):
            blk.as_array(object)
        with pytest.raises(BufferError):
            blk.release()  # the array still views it
        del arr
        gc.collect()
        blk.release()


def test_zero_byte_and_bad_sizes_are_refused() -> None:
    with shmipc.Heap.anonymous(MiB) as heap:
        with pytest.raises(ValueError, match="nbytes >= 1"):
            heap.allocate(0)
        with pytest.raises(ValueError):
            heap.allocate(-5)
        with pytest.raises(TypeError):
            heap.allocate(1.5)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            heap.allocate(True)
        with pytest.raises(ValueError):
            heap.shared_block("x", 0)
        with pytest.raises(MemoryError, match="cannot allocate"):
            heap.allocate(1 << 50)
        assert heap.stats()["allocations"] == 0


def test_block_context_manager_releases() -> None:
    with shmipc.Heap.anonymous(MiB) as heap:
        base = heap.stats()["allocations"]
        with heap.allocate(1000) as blk:
            assert heap.stats()["allocations"] == base + 1
        assert blk.released
        assert heap.stats()["allocations"] == base
        blk.release()  # idempotent
        with pytest.raises(ValueError, match="released"):
            memoryview(blk)


def test_blocks_are_freed_when_garbage_collected() -> None:
    with shmipc.Heap.anonymous(MiB) as heap:
        for _ in range(10000):
            heap.allocate(50000 // 100)
        gc.collect()
        assert heap.stats()["allocations"] == 0


def test_memory_error_is_precise_and_heap_stays_usable() -> None:
    with shmipc.Heap.anonymous(MiB) as heap:
        big = heap.allocate(700 * 1024)
        with pytest.raises(MemoryError) as ei:
            heap.allocate(600 * 1024)
        msg = str(ei.value)
        assert "614400 bytes" in msg and "free" in msg and "largest free block" in msg
        big.release()
        again = heap.allocate(600 * 1024)
        again.release()
        heap._check_invariants()


def test_stats_have_the_documented_keys_and_add_up() -> None:
    with shmipc.Heap.anonymous(4 * MiB) as heap:
        s0 = heap.stats()
        for k in ("size", "used", "free", "largest_free", "segments", "allocations"):
            assert isinstance(s0[k], int)
        assert s0["size"] == 4 * MiB and s0["segments"] == 1 and s0["used"] == 0
        blks = [heap.allocate(1000) for _ in range(10)]
        s1 = heap.stats()
        assert s1["allocations"] == 10
        assert s1["used"] >= 10000
        assert s1["used"] + s1["free"] == s0["free"]
        assert s1["largest_free"] < s0["largest_free"]
        for b in blks:
            b.release()


def test_closed_heap_raises_value_error_and_close_is_idempotent() -> None:
    heap = shmipc.Heap.anonymous(MiB)
    blk = heap.allocate(10)
    heap.close()
    heap.close()
    assert heap.closed
    with pytest.raises(ValueError, match="closed"):
        heap.allocate(10)
    with pytest.raises(ValueError, match="closed"):
        heap.stats()
    with pytest.raises(ValueError, match="closed"):
        memoryview(blk)
    blk.release()  # harmless: the heap took its blocks back when it closed


def test_heap_cannot_close_while_views_of_its_blocks_exist() -> None:
    heap = shmipc.Heap.anonymous(MiB)
    blk = heap.allocate(10)
    mv = memoryview(blk)
    with pytest.raises(BufferError):
        heap.close()
    mv.release()
    heap.close()


def test_block_is_not_constructible_or_picklable() -> None:
    with pytest.raises(TypeError):
        shmipc.Block()
    with shmipc.Heap.anonymous(MiB) as heap:
        blk = heap.allocate(8)
        with pytest.raises(TypeError, match="channel"):
            pickle.dumps(blk)
        blk.release()


def test_threads_allocate_and_free_concurrently() -> None:
    with shmipc.Heap.anonymous(8 * MiB) as heap:
        errors: list[BaseException] = []

        def run(seed: int) -> None:
            try:
                q = _ListQueue()
                W.fuzz(None, heap_proxy, seed, 3000, q)  # type: ignore[arg-type]
                assert q.items == [0]
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        heap_proxy = _NoClose(heap)
        ts = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        assert not errors
        heap._flush_caches()
        heap._check_invariants()
        assert heap._all_freed()


class _ListQueue:
    def __init__(self) -> None:
        self.items: list[object] = []

    def put(self, x: object) -> None:
        self.items.append(x)


class _NoClose:
    """The heap, minus close() (threads share one handle)."""

    def __init__(self, heap: shmipc.Heap) -> None:
        self._heap = heap

    def allocate(self, n: int) -> shmipc.Block:
        return self._heap.allocate(n)

    def close(self) -> None:
        pass


# --- named heaps: owner / stale / mode / validation ------------------------------------------


def test_named_heap_is_visible_in_dev_shm_with_exact_mode(name: str) -> None:
    old = os.umask(0o077)
    try:
        with shmipc.Heap.create(name, size=MiB, mode=0o640) as heap:
            st = os.stat(f"/dev/shm/{name}")
            assert stat.S_IMODE(st.st_mode) == 0o640
            assert st.st_size == MiB
            assert st.st_blocks * 512 >= MiB  # space reserved at creation
            assert heap.name == name
    finally:
        os.umask(old)
    assert not os.path.exists(f"/dev/shm/{name}")


def test_create_of_a_live_name_is_file_exists_and_attach_of_missing_is_not_found(
    name: str,
) -> None:
    with shmipc.Heap.create(name, size=MiB):
        with pytest.raises(FileExistsError):
            shmipc.Heap.create(name, size=MiB)
    with pytest.raises(FileNotFoundError):
        shmipc.Heap.attach(name)


@pytest.mark.parametrize("bad", ["", "a/b", "x" * 300, "nul\0"])
def test_bad_names_are_value_errors(bad: str) -> None:
    with pytest.raises(ValueError):
        shmipc.Heap.create(bad, size=MiB)


def test_bad_sizes_and_modes_are_value_errors(name: str) -> None:
    with pytest.raises(ValueError):
        shmipc.Heap.create(name, size=0)
    with pytest.raises(ValueError):
        shmipc.Heap.create(name, size=1000)  # below the minimum
    with pytest.raises(ValueError):
        shmipc.Heap.create(name, size=MiB, mode=0o1000000)
    with pytest.raises(ValueError):
        shmipc.Heap.create(name, size=2 * MiB, max_size=MiB)
    with pytest.raises(TypeError):
        shmipc.Heap.create(name, size="big")  # type: ignore[arg-type]


def test_attach_to_garbage_is_corrupt_segment_error(name: str) -> None:
    path = f"/dev/shm/{name}"
    for content in (b"x" * 100000, b"", b"\0" * 64):
        with open(path, "wb") as f:
            f.write(content)
        with pytest.raises(shmipc.CorruptSegmentError):
            shmipc.Heap.attach(name)
    os.unlink(path)


def test_attach_to_another_kind_of_segment_is_corrupt_segment_error(name: str) -> None:
    # A heap's header with a truncated body: header validation catches it before mapping.
    with shmipc.Heap.create(name, size=MiB, persistent=True):
        pass
    os.truncate(f"/dev/shm/{name}", 4096)
    with pytest.raises(shmipc.CorruptSegmentError):
        shmipc.Heap.attach(name)
    shmipc.unlink(name)


def test_too_big_for_dev_shm_fails_at_creation_not_with_sigbus(name: str) -> None:
    sv = os.statvfs("/dev/shm")
    free = sv.f_bavail * sv.f_frsize
    with pytest.raises((MemoryError, OSError)):
        shmipc.Heap.create(name, size=free + (64 << 20))
    assert not os.path.exists(f"/dev/shm/{name}")


def test_persistent_heap_survives_its_owner_until_unlink(name: str) -> None:
    with shmipc.Heap.create(name, size=MiB, persistent=True) as heap:
        blk = heap.shared_block("k", 8)
        memoryview(blk)[:2] = b"hi"
        blk.release()
    with shmipc.Heap.attach(name) as heap:
        assert bytes(heap.shared_block("k", 8))[:2] == b"hi"
    shmipc.unlink(name)


def test_killed_owner_name_is_replaced_at_next_create(
    name: str, spawn: mp.context.SpawnContext
) -> None:
    ready = spawn.Event()
    p = spawn.Process(target=W.create_and_get_killed, args=(name, ready))
    p.start()
    assert ready.wait(30), f"child did not get ready (exit code {p.exitcode})"
    p.kill()
    join_all([p])
    assert os.path.exists(f"/dev/shm/{name}")  # stale, left by the dead owner
    with shmipc.Heap.create(name, size=MiB) as heap:  # replaces it
        assert heap.stats()["allocations"] == 0


# --- sharing between processes ----------------------------------------------------------------


def test_named_heap_bytes_are_seen_by_another_process(
    name: str, spawn: mp.context.SpawnContext
) -> None:
    with shmipc.Heap.create(name, size=MiB) as heap:
        blk = heap.allocate(11)
        memoryview(blk)[:] = b"hello heap!"
        q = spawn.Queue()
        p = spawn.Process(target=W.read_block, args=(name, blk.offset, 11, q))
        p.start()
        assert q.get(timeout=30) == b"hello heap!"
        join_all([p])
        assert p.exitcode == 0
        blk.release()


@pytest.mark.parametrize("anonymous", [True, False])
@pytest.mark.parametrize("how", ["arg", "queue"])
def test_heap_travels_to_spawned_children(
    name: str, spawn: mp.context.SpawnContext, anonymous: bool, how: str
) -> None:
    heap = shmipc.Heap.anonymous(MiB) if anonymous else shmipc.Heap.create(name, size=MiB)
    with heap:
        q = spawn.Queue()
        if how == "arg":
            p = spawn.Process(target=W.use_passed_heap, args=(heap, q))
            p.start()
        else:
            q_in = spawn.Queue()
            p = spawn.Process(target=W.use_passed_heap, args=(None, q, q_in))
            p.start()
            q_in.put(heap)
        status, clients = q.get(timeout=30)
        assert status == "ok" and clients >= 2
        join_all([p])
        assert p.exitcode == 0
        assert bytes(heap.shared_block("handoff", 16))[:5] == b"child"


def test_anonymous_heap_refuses_plain_pickle_and_named_pickles_by_name(name: str) -> None:
    with shmipc.Heap.anonymous(MiB) as heap:
        with pytest.raises(TypeError, match="multiprocessing"):
            pickle.dumps(heap)
    with shmipc.Heap.create(name, size=MiB) as heap:
        clone = pickle.loads(pickle.dumps(heap))
        assert clone.name == name
        clone.close()


def test_fork_child_using_the_inherited_handle_becomes_its_own_client(name: str) -> None:
    fork = mp.get_context("fork")
    with shmipc.Heap.create(name, size=MiB) as heap:
        q = fork.Queue()
        p = fork.Process(target=W.fork_child_uses_inherited, args=(heap, q))
        p.start()
        assert q.get(timeout=30) == 2
        join_all([p])
        assert p.exitcode == 0
        assert os.path.exists(f"/dev/shm/{name}")  # the child did not remove our name
        heap._check_invariants()
        assert heap.stats()["allocations"] == 0


def test_blocks_of_a_sigkilled_process_are_reclaimed(
    name: str, spawn: mp.context.SpawnContext
) -> None:
    with shmipc.Heap.create(name, size=4 * MiB) as heap:
        before = heap.stats()
        ready = spawn.Event()
        p = spawn.Process(target=W.hold_blocks_until_killed, args=(name, 50, 20000, ready))
        p.start()
        assert ready.wait(30), f"child did not get ready (exit code {p.exitcode})"
        held = heap.stats()
        assert held["allocations"] >= before["allocations"] + 50
        p.kill()
        join_all([p])
        after = heap.stats()  # reaps the dead client
        assert after["allocations"] == before["allocations"]
        assert after["used"] == before["used"]
        heap._check_invariants()


def test_a_process_killed_holding_the_allocator_lock_does_not_block_others(
    name: str, spawn: mp.context.SpawnContext
) -> None:
    with shmipc.Heap.create(name, size=MiB, thread_cache=False) as heap:
        p = spawn.Process(target=W.die_holding_the_lock, args=(name,))
        p.start()
        join_all([p])
        assert p.exitcode == -9
        blk = heap.allocate(100)  # recovers the robust lock (EOWNERDEAD)
        blk.release()
        heap._check_invariants()
        assert heap.stats()["allocations"] == 0  # the dead one's block was reclaimed


def test_processes_killed_at_random_inside_alloc_free_loops_never_wedge_the_heap(
    name: str, spawn: mp.context.SpawnContext
) -> None:
    with shmipc.Heap.create(name, size=8 * MiB, thread_cache=False) as heap:
        for i in range(6):
            ready = spawn.Event()
            p = spawn.Process(target=W.hammer_allocator, args=(name, ready))
            p.start()
            assert ready.wait(30), f"child did not get ready (exit code {p.exitcode})"
            time.sleep(0.05 + 0.03 * i)
            p.kill()
            join_all([p])
            blk = heap.allocate(1000)
            blk.release()
            heap._check_invariants()
        assert heap.stats()["allocations"] == 0


def test_multi_process_alloc_free_fuzz(name: str, spawn: mp.context.SpawnContext) -> None:
    with shmipc.Heap.create(name, size=16 * MiB) as heap:
        q = spawn.Queue()
        ps = [spawn.Process(target=W.fuzz, args=(name, None, seed, 5000, q)) for seed in range(3)]
        for p in ps:
            p.start()
        errors = [q.get(timeout=120) for _ in ps]
        join_all(ps)
        assert errors == [0, 0, 0]
        assert all(p.exitcode == 0 for p in ps)
        heap._check_invariants()
        assert heap.stats()["allocations"] == 0


def test_thread_caches_of_a_sigkilled_process_are_reclaimed(
    name: str, spawn: mp.context.SpawnContext
) -> None:
    with shmipc.Heap.create(name, size=4 * MiB) as heap:
        before = heap.stats()
        ready = spawn.Event()
        p = spawn.Process(target=W.cache_then_hold, args=(name, ready))
        p.start()
        assert ready.wait(30), f"child did not get ready (exit code {p.exitcode})"
        assert heap.stats()["cached"] > before["cached"]
        p.kill()
        join_all([p])
        after = heap.stats()
        assert after["cached"] == before["cached"]
        assert after["allocations"] == before["allocations"]
        assert after["free"] == before["free"]
        heap._check_invariants()


def test_multi_process_fuzz_on_a_growing_heap(name: str, spawn: mp.context.SpawnContext) -> None:
    with shmipc.Heap.create(name, size=MiB, max_size=24 * MiB) as heap:
        q = spawn.Queue()
        ps = [spawn.Process(target=W.fuzz, args=(name, None, seed, 4000, q)) for seed in range(3)]
        for p in ps:
            p.start()
        errors = [q.get(timeout=120) for _ in ps]
        join_all(ps)
        assert errors == [0, 0, 0]
        assert heap.stats()["segments"] > 1  # the workers grew it concurrently
        heap._check_invariants()
        assert heap.stats()["allocations"] == 0


def test_waiting_for_a_shared_block_is_interruptible_by_ctrl_c(
    name: str, spawn: mp.context.SpawnContext
) -> None:
    with shmipc.Heap.create(name, size=MiB) as heap:
        in_init = spawn.Event()
        creator = spawn.Process(target=W.slow_creator, args=(name, in_init))
        creator.start()
        assert in_init.wait(30)
        q = spawn.Queue()
        waiter = spawn.Process(target=W.interruptible_waiter, args=(name, q))
        waiter.start()
        assert q.get(timeout=30) == "waiting"
        time.sleep(0.5)  # inside the wait
        os.kill(waiter.pid, signal.SIGINT)  # type: ignore[arg-type]
        assert q.get(timeout=10) == "interrupted"
        creator.kill()
        join_all([creator, waiter])
        heap.stats()  # reaps the creator: its half-made block is dropped
        assert heap._named() == []


# --- growth -----------------------------------------------------------------------------------


def test_named_heap_grows_into_extension_segments_mapped_lazily_by_others(
    name: str, spawn: mp.context.SpawnContext
) -> None:
    with shmipc.Heap.create(name, size=MiB, max_size=8 * MiB) as heap:
        q_in, q_out = spawn.Queue(), spawn.Queue()
        p = spawn.Process(target=W.read_after_growth, args=(name, q_in, q_out))
        p.start()
        assert q_out.get(timeout=30) == 1  # attached before the growth
        blocks = [heap.allocate(700 * 1024) for _ in range(3)]
        assert heap.stats()["segments"] > 1
        assert os.path.exists(f"/dev/shm/{name}.1")
        assert stat.S_IMODE(os.stat(f"/dev/shm/{name}.1").st_mode) == 0o600
        last = blocks[-1]
        memoryview(last)[:4] = b"grow"
        q_in.put((last.offset, last.nbytes))
        assert q_out.get(timeout=30) == b"grow"
        join_all([p])
        with pytest.raises(MemoryError, match="max_size"):
            heap.allocate(8 * MiB)
        for b in blocks:
            b.release()
        heap._check_invariants()
    assert not any(e.startswith(name) for e in os.listdir("/dev/shm"))


def test_leftover_extensions_of_a_dead_heap_are_removed_by_the_next_create(name: str) -> None:
    with shmipc.Heap.create(name, size=MiB, max_size=4 * MiB, persistent=True) as heap:
        b = heap.allocate(900 * 1024)
        b2 = heap.allocate(900 * 1024)
        assert os.path.exists(f"/dev/shm/{name}.1")
        b.release()
        b2.release()
    shmipc.unlink(name)  # removes the primary only, like a crashed owner would leave it
    assert os.path.exists(f"/dev/shm/{name}.1")
    with shmipc.Heap.create(name, size=MiB):
        assert not os.path.exists(f"/dev/shm/{name}.1")


# --- shared blocks ----------------------------------------------------------------------------


def test_shared_block_init_runs_once_across_racing_processes(
    name: str, spawn: mp.context.SpawnContext
) -> None:
    with shmipc.Heap.create(name, size=MiB) as heap:
        q = spawn.Queue()
        ps = [spawn.Process(target=W.shared_block_user, args=(name, q)) for _ in range(4)]
        for p in ps:
            p.start()
        results = [q.get(timeout=60) for _ in ps]
        join_all(ps)
        assert sum(r[0] for r in results) == 1
        assert len({r[1] for r in results}) == 1  # everyone saw the creator's pid
        blk = heap.shared_block("state", 64)
        assert memoryview(blk).cast("q")[0] == results[0][1]


def test_shared_block_whose_creator_dies_in_init_is_created_again(
    name: str, spawn: mp.context.SpawnContext
) -> None:
    with shmipc.Heap.create(name, size=MiB) as heap:
        p = spawn.Process(target=W.die_in_init, args=(name,))
        p.start()
        join_all([p])
        ran = []
        blk = heap.shared_block("doomed", 64, lambda b: ran.append(1), timeout=10)
        assert ran == [1]
        blk.release()


def test_shared_block_init_error_propagates_and_leaves_no_entry() -> None:
    with shmipc.Heap.anonymous(MiB) as heap:

        def bad(blk: shmipc.Block) -> None:
            raise RuntimeError("nope")

        with pytest.raises(RuntimeError, match="nope"):
            heap.shared_block("s", 10, bad)
        blk = heap.shared_block("s", 10)
        assert bytes(blk) == b"\0" * 10
        blk.release()
        blk.release()
        assert heap.stats()["allocations"] == 1  # still there: shared blocks live with the heap


def test_heap_operations_leak_no_fds(no_fd_leaks: None, name: str) -> None:
    for _ in range(5):
        with shmipc.Heap.create(name, size=MiB, max_size=4 * MiB) as heap:
            blocks = [heap.allocate(600 * 1024) for _ in range(3)]
            with shmipc.Heap.attach(name) as other:
                other.stats()
            for b in blocks:
                b.release()
        with shmipc.Heap.anonymous(MiB) as anon:
            anon.allocate(10).release()


def test_shared_block_waiters_time_out_while_the_creator_is_still_in_init() -> None:
    with shmipc.Heap.anonymous(MiB) as heap:
        started = threading.Event()

        def slow(blk: shmipc.Block) -> None:
            started.set()
            time.sleep(1.0)

        t = threading.Thread(target=lambda: heap.shared_block("slow", 8, slow).release())
        t.start()
        assert started.wait(10)
        with pytest.raises(TimeoutError):
            heap.shared_block("slow", 8, timeout=0.2)
        t.join(30)
        blk = heap.shared_block("slow", 8, timeout=10)  # ready now
        blk.release()


def test_adopting_an_offset_that_is_not_a_live_block_is_refused() -> None:
    with shmipc.Heap.anonymous(MiB) as heap:
        blk = heap.allocate(100)
        for bad in (0, 64, blk.offset + 64, blk.offset - 16, 1 << 45):
            with pytest.raises(ValueError):
                heap._adopt(bad, 10)
        with pytest.raises(ValueError):
            heap._adopt(blk.offset, 10000)  # larger than the block
        blk.release()


def test_fork_child_releasing_an_inherited_block_does_not_free_it(name: str) -> None:
    fork = mp.get_context("fork")
    with shmipc.Heap.create(name, size=MiB) as heap:
        blk = heap.allocate(100)
        memoryview(blk)[:4] = b"mine"
        q = fork.Queue()
        p = fork.Process(target=W.fork_child_releases_inherited, args=(blk, q))
        p.start()
        assert q.get(timeout=30) == "released"
        join_all([p])
        assert heap.stats()["allocations"] == 1
        assert bytes(memoryview(blk)[:4]) == b"mine"
        blk.release()
        assert heap.stats()["allocations"] == 0


def test_attached_process_keeps_working_after_the_owner_closes(name: str) -> None:
    owner = shmipc.Heap.create(name, size=MiB, max_size=4 * MiB)
    other = shmipc.Heap.attach(name)
    owner.close()
    assert not os.path.exists(f"/dev/shm/{name}")
    blk = other.allocate(1000)
    memoryview(blk)[:2] = b"ok"
    blk.release()
    with pytest.raises(MemoryError, match="name was removed"):
        other.allocate(2 * MiB)  # no growth without a name: nobody would remove NAME.1
    other._check_invariants()
    other.close()


def test_filling_every_block_completely_never_touches_allocator_metadata() -> None:
    with shmipc.Heap.anonymous(4 * MiB) as heap:
        blocks = [heap.allocate(n) for n in (1, 15, 16, 48, 63, 64, 65, 1000, 4096, 4097, 70000)]
        blocks += [heap.allocate(7, align=a) for a in (128, 1024, 4096)]
        for b in blocks:
            memoryview(b)[:] = b"\xff" * b.nbytes  # every byte a Block exposes
        heap._check_invariants()
        for b in blocks:
            assert bytes(b) == b"\xff" * b.nbytes
            b.release()
        heap._flush_caches()
        heap._check_invariants()
        assert heap._all_freed()


def test_the_python_layer_picks_the_factory_of_a_heap_handle(name: str) -> None:
    # HeapCore() is an empty, closed handle; one _open_* opens it, once.
    h = shmipc._core.HeapCore()
    assert h.closed
    with pytest.raises(ValueError):
        h._stats()
    h._open_anonymous(1 << 20, True)
    assert not h.closed and h._anonymous()
    with pytest.raises(ValueError, match="already open"):
        h._open_anonymous(1 << 20, True)
    with pytest.raises(ValueError, match="already open"):
        h._open_create(name, 1 << 20, 0, 0o600, False, True)
    assert not os.path.exists(f"/dev/shm/{name}")  # refused before anything was created
    h._close()
    with shmipc.Heap.create(name, size=1 << 20) as a, shmipc.Heap.attach(name) as b:
        assert a.name == b.name == name and not a._anonymous()
