"""Buffers over memfd and fd passing between processes (API.md sections 0 and 1)."""

from __future__ import annotations

import array
import gc
import multiprocessing as mp
import os
import pickle
import signal
import socket
import struct
import threading
import time

import numpy as np
import pytest

import shmipc
from shmipc import CorruptSegmentError, ShmipcError, _core

import workers_buffer as workers
from testutil import join_all

SOCK_TYPES = [socket.SOCK_STREAM, socket.SOCK_SEQPACKET, socket.SOCK_DGRAM]


@pytest.fixture
def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield a, b
    a.close()
    b.close()


# --- the Buffer object ---------------------------------------------------------------------


def test_new_buffer_is_zero_filled_and_writable() -> None:
    with shmipc.Buffer(10_000) as buf:
        assert buf.nbytes == 10_000 and len(buf) == 10_000
        assert not buf.readonly
        with memoryview(buf) as v:
            assert v.nbytes == 10_000 and not v.readonly
            assert bytes(v) == bytes(10_000)
            v[5] = 7
        assert np.frombuffer(buf, np.uint8)[5] == 7


def test_buffer_protocol_is_zero_copy() -> None:
    buf = shmipc.Buffer(64)
    a = np.frombuffer(buf, np.uint8)
    b = np.frombuffer(buf, np.uint8)
    a[3] = 9
    assert b[3] == 9
    assert a.__array_interface__["data"][0] == buf._address


def test_views_keep_the_memory_alive_after_close_and_delete() -> None:
    buf = shmipc.Buffer(4096)
    arr = buf.as_array(np.int32)
    arr[:] = 5
    buf.close()
    assert buf.closed
    del buf
    gc.collect()
    assert int(arr.sum()) == 5 * 1024
    arr[0] = 6  # still mapped and writable


def test_using_a_closed_buffer_raises_value_error_and_close_is_idempotent() -> None:
    buf = shmipc.Buffer(16)
    buf.close()
    buf.close()
    with pytest.raises(ValueError, match="closed"):
        memoryview(buf)
    with pytest.raises(ValueError, match="closed"):
        buf.fileno()
    with pytest.raises(ValueError, match="closed"):
        buf.as_array()
    with pytest.raises(ValueError, match="closed"):
        with buf:
            pass


def test_bad_sizes_are_refused_with_clear_errors() -> None:
    with pytest.raises(ValueError):
        shmipc.Buffer(-1)
    with pytest.raises(TypeError):
        shmipc.Buffer("10")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        shmipc.Buffer(1.5)  # type: ignore[arg-type]


def test_huge_buffer_is_a_memory_error_not_a_crash() -> None:
    with pytest.raises((MemoryError, OSError)):
        shmipc.Buffer(1 << 50)


def test_from_bytes_copies_any_buffer_object_once() -> None:
    src = np.arange(100, dtype=np.float32)
    buf = shmipc.Buffer.from_bytes(src)
    assert buf.nbytes == 400
    assert np.array_equal(buf.as_array(np.float32), src)
    src[0] = 42
    assert buf.as_array(np.float32)[0] == 0
    assert bytes(shmipc.Buffer.from_bytes(b"abc")) == b"abc"
    assert bytes(shmipc.Buffer.from_bytes(array.array("b", [1, 2]))) == b"\x01\x02"
    assert shmipc.Buffer.from_bytes(b"").nbytes == 0


def test_as_array_checks_shape_and_dtype() -> None:
    buf = shmipc.Buffer(48)
    assert buf.as_array(np.float64, (2, 3)).shape == (2, 3)
    f = buf.as_array(np.float64, (2, 3), order="F")
    assert f.flags.f_contiguous
    assert buf.as_array(np.float64).shape == (6,)
    with pytest.raises(ValueError, match="needs"):
        buf.as_array(np.float64, (7,))
    with pytest.raises(ValueError, match="whole number"):
        buf.as_array(np.dtype("V5"))
    with pytest.raises(TypeError):
        buf.as_array(object, (1,))


def test_fileno_is_a_sealed_memfd() -> None:
    import fcntl

    buf = shmipc.Buffer(100)
    assert os.readlink(f"/proc/self/fd/{buf.fileno()}").startswith("/memfd:")
    seals = fcntl.fcntl(buf.fileno(), fcntl.F_GET_SEALS)
    assert seals & fcntl.F_SEAL_SHRINK
    with pytest.raises(OSError):
        os.ftruncate(buf.fileno(), 10)


def test_seal_makes_the_buffer_immutable() -> None:
    buf = shmipc.Buffer.from_bytes(b"abcd")
    buf.seal()
    assert buf.sealed and buf.readonly
    with pytest.raises(ValueError, match="read-only"):
        np.frombuffer(buf, np.uint8)[0] = 1  # frombuffer falls back to a read-only view
    with pytest.raises(ValueError, match="read-only"):
        buf.as_array()[0] = 1
    assert memoryview(buf).readonly
    with pytest.raises(OSError):
        os.pwrite(buf.fileno(), b"x", 0)
    assert bytes(buf) == b"abcd"


def test_seal_is_refused_while_a_writable_view_exists() -> None:
    buf = shmipc.Buffer(8)
    v = memoryview(buf)
    with pytest.raises(BufferError):
        buf.seal()
    v.release()
    buf.seal()


def test_plain_pickle_gives_a_clear_type_error() -> None:
    with pytest.raises(TypeError, match="multiprocessing"):
        pickle.dumps(shmipc.Buffer(8))


def test_exception_hierarchy() -> None:
    assert issubclass(shmipc.CorruptSegmentError, ValueError)
    assert issubclass(shmipc.CorruptSegmentError, ShmipcError)
    assert issubclass(shmipc.PeerDiedError, EOFError)
    assert issubclass(shmipc.ChannelBusyError, ShmipcError)


# --- send / recv -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", SOCK_TYPES)
def test_send_recv_moves_a_buffer_on_every_unix_socket_type(kind: int) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, kind)
    with a, b:
        buf = shmipc.Buffer.from_bytes(b"hello world")
        shmipc.send(a, buf, meta={"frame": 7})
        got = shmipc.recv(b, timeout=5)
        assert bytes(got) == b"hello world"
        assert got.meta == {"frame": 7}
        assert not got.readonly
        assert buf.readonly and buf.moved
        memoryview(got)[0] = ord("H")
        assert bytes(buf)[:1] == b"H"  # the same memory, read-only for the sender


def test_send_accepts_int_fds_and_bytes_meta(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    shmipc.send(a.fileno(), shmipc.Buffer(3), meta=b"\x00raw")
    got = shmipc.recv(b.fileno(), timeout=5)
    assert got.meta == b"\x00raw"


def test_writing_a_moved_buffer_through_numpy_raises(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    buf = shmipc.Buffer(16)
    shmipc.send(a, buf)
    arr = np.frombuffer(buf, np.uint8)  # falls back to a read-only view
    with pytest.raises(ValueError, match="read-only"):
        arr[0] = 1
    with pytest.raises(ValueError, match="read-only"):
        buf.as_array()[0] = 1
    assert memoryview(buf).readonly
    shmipc.recv(b, timeout=5).close()


def test_send_refuses_while_a_writable_view_is_exported(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    buf = shmipc.Buffer(16)
    view = buf.as_array(np.uint8)
    with pytest.raises(BufferError, match="writable view"):
        shmipc.send(a, buf)
    del view
    shmipc.send(a, buf)
    shmipc.recv(b, timeout=5)


def test_a_moved_buffer_cannot_be_sent_again_but_a_sealed_one_can(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    buf = shmipc.Buffer(16)
    shmipc.send(a, buf)
    with pytest.raises(BufferError, match="moved"):
        shmipc.send(a, buf)
    sealed = shmipc.Buffer.from_bytes(b"const")
    sealed.seal()
    shmipc.send(a, sealed)
    shmipc.send(a, sealed)
    shmipc.recv(b, timeout=5)
    r1, r2 = shmipc.recv(b, timeout=5), shmipc.recv(b, timeout=5)
    assert bytes(r1) == bytes(r2) == b"const"
    assert r1.readonly and r1.sealed


def test_meta_must_be_small_bytes_or_a_dict(pair: tuple[socket.socket, socket.socket]) -> None:
    a, _ = pair
    with pytest.raises(ValueError, match="65536"):
        shmipc.send(a, shmipc.Buffer(1), meta=b"x" * (64 * 1024 + 1))
    with pytest.raises(TypeError):
        shmipc.send(a, shmipc.Buffer(1), meta=[1, 2])  # type: ignore[arg-type]


def test_send_rejects_non_unix_sockets_and_non_buffers() -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with s, pytest.raises(ValueError, match="AF_UNIX"):
        shmipc.send(s, shmipc.Buffer(1))
    r, w = os.pipe()
    try:
        with pytest.raises(ValueError, match="socket"):
            shmipc.send(w, shmipc.Buffer(1))
    finally:
        os.close(r)
        os.close(w)
    a, b = socket.socketpair()
    with a, b, pytest.raises(TypeError):
        shmipc.send(a, b"bytes")  # type: ignore[arg-type]


def test_recv_timeout_and_eof(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    with pytest.raises(TimeoutError):
        shmipc.recv(b, timeout=0.05)
    with pytest.raises(TimeoutError):
        shmipc.recv(b, timeout=0)
    a.close()
    with pytest.raises(EOFError):
        shmipc.recv(b, timeout=5)


def _header(nbytes: int, meta_len: int = 0, desc_len: int = 0, magic: int = 0x46424D53) -> bytes:
    return struct.pack("<IHHQIIQ", magic, 1, 0, nbytes, meta_len, desc_len, 0)


@pytest.mark.usefixtures("no_fd_leaks")
def test_garbage_on_the_socket_is_a_corrupt_segment_error_and_closes_every_fd() -> None:
    cases = []
    memfd = os.memfd_create("plain", os.MFD_CLOEXEC)  # not sealed
    os.ftruncate(memfd, 4096)
    good = shmipc.Buffer(4096)
    r, w = os.pipe()
    cases.append((b"garbage-garbage-garbage-garbage!", [good.fileno()]))  # bad magic
    cases.append((_header(4096), []))  # no fd
    cases.append((_header(4096), [good.fileno(), good.fileno()]))  # two fds
    cases.append((_header(4096), [good.fileno()] * 10))  # too many: MSG_CTRUNC
    cases.append((_header(4096), [r]))  # not a memfd
    cases.append((_header(4096), [memfd]))  # memfd not sealed against shrinking
    cases.append((_header(1 << 20), [good.fileno()]))  # smaller than announced
    cases.append((_header(16, meta_len=1 << 30), [good.fileno()]))  # absurd lengths
    for data, fds in cases:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with a, b:
            socket.send_fds(a, [data], fds)
            with pytest.raises(CorruptSegmentError):
                shmipc.recv(b, timeout=5)
    os.close(memfd)
    os.close(r)
    os.close(w)
    good.close()


def test_a_stream_message_cut_short_is_corrupt() -> None:
    good = shmipc.Buffer(64)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with b:
        socket.send_fds(a, [_header(64, meta_len=100)[:20]], [good.fileno()])
        a.close()
        with pytest.raises(CorruptSegmentError):
            shmipc.recv(b, timeout=5)


def test_recv_array_of_a_plain_buffer_and_bad_descriptors_are_corrupt(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    shmipc.send(a, shmipc.Buffer(8))
    with pytest.raises(CorruptSegmentError):
        shmipc.recv_array(b, timeout=5)
    good = shmipc.Buffer(64)
    for desc in [
        b"{",
        b'{"descr":"<f8","shape":[100],"fortran":false,"offset":0}',
        b'{"descr":"|O","shape":[1],"fortran":false,"offset":0}',
        b'{"descr":"<f8","shape":[-1],"fortran":false,"offset":0}',
    ]:
        socket.send_fds(a, [_header(64, desc_len=len(desc)) + desc], [good.fileno()])
        with pytest.raises(CorruptSegmentError):
            shmipc.recv_array(b, timeout=5)


@pytest.mark.parametrize(
    "dtype_text",
    [b"99\x199)9", b"i4,)", b"(", b"<f8,<f8", b"O", b"\xff\xfe", b"<M8[" + b"9" * 40 + b"]"],
)
def test_an_array_descriptor_numpy_cannot_parse_is_corrupt_not_a_crash(
    dtype_text: bytes, pair: tuple[socket.socket, socket.socket]
) -> None:
    # Found by fuzz/fuzz_fd_messages.py: numpy's comma-string parser raised SyntaxError. The
    # descriptor of src/ipc_core/base/array_descriptor.hpp (version 1), as a plain dtype string
    # and as a structured one (flag 2: JSON).
    a, b = pair
    good = shmipc.Buffer(64)
    for flags in (0, 2):
        desc = struct.pack("<BBBBIQq", 1, flags, 1, 0, len(dtype_text), 0, 1) + dtype_text
        socket.send_fds(a, [_header(64, desc_len=len(desc)) + desc], [good.fileno()])
        with pytest.raises(CorruptSegmentError):
            shmipc.recv_array(b, timeout=5)


@pytest.mark.parametrize(
    "json_descr",
    [
        b"[1]",
        b'[["a"]]',
        b'[["a", "<f8", 3]]',
        b'{"a": 1}',
        b"[" * 300 + b"]" * 300,
        b'[["a", "|O8"]]',
        b'"<f8"',
        b'[["a", "<f8"], ["a", "<f8"]]',
        b'[[[1, 2], "<f8"]]',
    ],
)
def test_a_structured_descriptor_numpy_cannot_use_is_corrupt_not_a_crash(
    json_descr: bytes, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    good = shmipc.Buffer(64)
    desc = struct.pack("<BBBBIQ", 1, 2, 0, 0, len(json_descr), 0) + json_descr
    socket.send_fds(a, [_header(64, desc_len=len(desc)) + desc], [good.fileno()])
    if json_descr == b'"<f8"':  # a plain dtype spelt as JSON is still a dtype: it decodes
        assert shmipc.recv_array(b, timeout=5).dtype == np.float64
        return
    with pytest.raises(CorruptSegmentError):
        shmipc.recv_array(b, timeout=5)


def test_ctrl_c_interrupts_a_blocking_recv_in_this_process(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    _, b = pair
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            shmipc.recv(b, timeout=30)
    finally:
        timer.cancel()


# --- arrays -----------------------------------------------------------------------------------

ARRAYS = [
    np.arange(24, dtype=np.float64).reshape(2, 3, 4),
    np.array(3.5),  # 0-d
    np.zeros((0, 5), dtype=np.int16),  # empty
    np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4)),
    np.arange(40, dtype=np.uint8).reshape(5, 8)[:, ::2],  # non-contiguous
    np.array([(1, 2.0), (3, 4.0)], dtype=[("a", "<i4"), ("b", "<f8")]),  # structured
    np.array([1 + 2j, 3 - 4j], dtype=np.complex128),
    np.array([True, False]),
    np.array(["ab", "cde"], dtype="U3"),
    np.arange(6, dtype=">i8"),  # big endian
    np.array(["2024-01-01"], dtype="datetime64[D]"),
]


@pytest.mark.parametrize("arr", ARRAYS, ids=lambda a: f"{a.dtype}-{a.shape}")
def test_send_array_round_trips_dtype_shape_and_values(arr: np.ndarray) -> None:
    for kind in SOCK_TYPES:
        a, b = socket.socketpair(socket.AF_UNIX, kind)
        with a, b:
            shmipc.send_array(a, arr, meta={"k": 1})
            got = shmipc.recv_array(b, timeout=5)
            assert got.dtype == arr.dtype
            assert got.shape == arr.shape
            np.testing.assert_array_equal(got, arr)
            if arr.ndim > 1 and arr.flags.f_contiguous and not arr.flags.c_contiguous:
                assert got.flags.f_contiguous


def test_send_array_of_object_dtype_is_a_type_error(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    with pytest.raises(TypeError):
        shmipc.send_array(pair[0], np.array([object()]))


def test_send_array_of_a_buffer_backed_array_is_zero_copy_and_moves_it(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    buf = shmipc.Buffer(8 * 100)
    arr = buf.as_array(np.float64, (10, 10))
    arr[:] = 1.5
    sub = arr[2:5]  # a contiguous slice: offset travels with it
    del arr
    shmipc.send_array(a, sub)
    assert not sub.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        sub[0, 0] = 2
    got = shmipc.recv_array(b, timeout=5)
    assert got.shape == (3, 10) and float(got.sum()) == 45.0
    got[0, 0] = 7  # the receiver owns the bytes now
    assert sub[0, 0] == 7  # zero copy: same memory


def test_send_array_refuses_while_other_writable_views_of_its_buffer_exist(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    buf = shmipc.Buffer(64)
    x = buf.as_array(np.int64)
    y = buf.as_array(np.int64)  # another view that could write after the move
    z = np.frombuffer(buf, np.int8)  # and another, through a memoryview
    with pytest.raises(BufferError):
        shmipc.send_array(a, x)
    del y
    with pytest.raises(BufferError):
        shmipc.send_array(a, x)
    del z
    shmipc.send_array(a, x)
    shmipc.recv_array(b, timeout=5)


def test_received_arrays_are_freed_when_garbage_collected(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    shmipc._core.clear_pool()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        shmipc.send_array(a, np.ones(1000))
        got = shmipc.recv_array(b, timeout=5)
        assert got.sum() == 1000
        del got
    shmipc._core.clear_pool()
    assert len(os.listdir("/proc/self/fd")) == before


def test_pool_reuses_memory_for_repeated_same_sized_sends(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    shmipc._core.clear_pool()
    data = np.ones(1 << 18)
    hits0 = shmipc.pool_stats()["hits"]
    for _ in range(10):
        shmipc.send_array(a, data)
        got = shmipc.recv_array(b, timeout=5)
        del got
    assert shmipc.pool_stats()["hits"] >= hits0 + 9


# --- other processes ---------------------------------------------------------------------------


def _spawn_with_socket(ctx: mp.context.BaseContext, target, *args):  # type: ignore[no-untyped-def]
    a, b = socket.socketpair()
    # multiprocessing pickles sockets by fd (DupFd): the child gets its end
    p = ctx.Process(target=_child_trampoline, args=(target, b, *args))
    p.start()
    b.close()
    return p, a


def _child_trampoline(target, sock, *args):  # type: ignore[no-untyped-def]
    target(sock.detach(), *args)


def test_a_child_process_receives_the_same_memory(spawn: mp.context.SpawnContext) -> None:
    p, a = _spawn_with_socket(spawn, workers.recv_and_report)
    with a:
        buf = shmipc.Buffer.from_bytes(b"ABCDEFGH")
        shmipc.send(a, buf, meta={"x": [1, 2]})
        a.settimeout(30)
        reply = a.recv(100)
        assert reply == b"ABCD" + repr({"x": [1, 2]}).encode()
    join_all([p])
    assert p.exitcode == 0
    assert bytes(buf)[:1] == bytes([99])  # the child's write is visible to us


def test_arrays_go_to_a_child_and_back_zero_copy(spawn: mp.context.SpawnContext) -> None:
    p, a = _spawn_with_socket(spawn, workers.echo_arrays, 5)
    with a:
        arr = np.zeros((256, 256), dtype=np.float32)
        for i in range(5):
            shmipc.send_array(a, arr)
            arr = shmipc.recv_array(a, timeout=30)
            assert arr.shape == (256, 256) and arr[0, 0] == i + 1 and arr.flags.writeable
    join_all([p])
    assert p.exitcode == 0


def test_ctrl_c_reaches_a_child_blocked_in_recv(spawn: mp.context.SpawnContext) -> None:
    p, a = _spawn_with_socket(spawn, workers.block_in_recv_until_interrupted)
    with a:
        a.settimeout(30)
        assert a.recv(1) == b"r", "child never became ready"
        time.sleep(0.1)
        os.kill(p.pid, signal.SIGINT)
        join_all([p], timeout=30)
    assert p.exitcode == 42


@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_buffers_travel_to_children_as_process_arguments(method: str) -> None:
    ctx = mp.get_context(method)
    buf = shmipc.Buffer(64)
    memoryview(buf)[:16] = bytes([7] * 16)
    buf.meta = {"from": "parent"}
    p = ctx.Process(target=workers.check_and_write, args=(buf, 7))
    p.start()
    join_all([p])
    assert p.exitcode == 0
    assert bytes(buf)[0] == 200


@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_buffers_travel_through_multiprocessing_queues(method: str) -> None:
    ctx = mp.get_context(method)
    q, done = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=workers.get_from_queue_and_write, args=(q, done))
    p.start()
    buf = shmipc.Buffer(8)
    memoryview(buf)[0] = 41
    q.put(buf)
    assert done.get(timeout=30) == bytes([41, 42])
    join_all([p])
    assert p.exitcode == 0
    assert bytes(buf)[:2] == bytes([41, 42])


def test_buffers_travel_through_multiprocessing_pipes(spawn: mp.context.SpawnContext) -> None:
    parent, child = spawn.Pipe()
    p = spawn.Process(target=workers.get_from_pipe_and_write, args=(child,))
    p.start()
    buf = shmipc.Buffer(8 * 4)
    buf.as_array(np.int64)[:] = [1, 2, 3, 4]
    parent.send(buf)
    assert parent.poll(30)
    assert parent.recv() == "ok"
    join_all([p])
    assert list(buf.as_array(np.int64)) == [2, 4, 6, 8]


# _core._copy_into: the bulk copy Python code uses to fill shared memory (shmipc.dask).


@pytest.mark.parametrize("threads", [1, 2, 4])
@pytest.mark.parametrize("n", [0, 100, 70_000, 5 << 20, (33 << 20) + 4097])
def test_copy_into_copies_exactly_at_an_offset(n: int, threads: int) -> None:
    src = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8)
    dst = np.zeros(n + 100, np.uint8)
    _core._copy_into(dst, 7, src, threads)
    assert np.array_equal(dst[7 : 7 + n], src)
    assert not dst[:7].any() and not dst[7 + n :].any()


def test_copy_into_refuses_what_does_not_fit_or_cannot_be_written() -> None:
    dst = np.zeros(10, np.uint8)
    with pytest.raises(ValueError, match="3 bytes do not fit at offset 8 of a 10-byte buffer"):
        _core._copy_into(dst, 8, b"abc")
    with pytest.raises(ValueError, match="at offset 11"):
        _core._copy_into(dst, 11, b"")
    with pytest.raises(BufferError):
        _core._copy_into(b"read-only", 0, b"x")
    with pytest.raises(TypeError):
        _core._copy_into(dst, 0, 12)
    with pytest.raises(TypeError):
        _core._copy_into(dst, -1, b"x")
    assert not dst.any()


def test_copy_into_handles_overlapping_ranges_like_memmove() -> None:
    a = np.arange(200_000, dtype=np.uint8)
    expect = a.copy()
    expect[1000:] = a[: 200_000 - 1000]
    _core._copy_into(a, 1000, a[: 200_000 - 1000])
    assert np.array_equal(a, expect)
