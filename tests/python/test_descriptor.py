"""The one array descriptor (src/ipc_core/base/array_descriptor.hpp) of every kind.

Buffers, channels, topics, shared values and dict entries describe their arrays with the same
bytes, made by python/shmipc/_descriptor.py; a malformed descriptor from shared memory or a
socket is CorruptSegmentError for every kind, never a crash.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import shmipc
from shmipc import CorruptSegmentError, _core, _descriptor

DTYPES = [
    np.dtype("<f8"),
    np.dtype(">i2"),
    np.dtype("|u1"),
    np.dtype("|b1"),
    np.dtype("<c16"),
    np.dtype("<U5"),
    np.dtype("|S3"),
    np.dtype("<M8[ns]"),
    np.dtype("<m8[10s]"),
    np.dtype([("x", "<i4"), ("y", "<f8", (2, 3))]),
    np.dtype([(("title", "t"), "|S2"), ("n", [("a", "|u1"), ("b", "<M8[D]")])]),
    np.dtype({"names": ["a", "b"], "formats": ["<i4", "<f8"], "offsets": [0, 8], "itemsize": 24}),
]


def _sample(dt: np.dtype[Any], shape: tuple[int, ...] = (2, 3)) -> np.ndarray:
    raw = np.arange(int(np.prod(shape)) * dt.itemsize, dtype=np.uint8) % 7
    return raw.view(dt).reshape(shape).copy()


def _same(got: np.ndarray, want: np.ndarray) -> bool:
    """Same dtype, shape and elements (padding bytes of structured dtypes aside)."""
    return bool(
        got.dtype == want.dtype
        and got.shape == want.shape
        and repr(got.tolist()) == repr(want.tolist())
    )


@pytest.fixture
def heap(name: str) -> Iterator[shmipc.Heap]:
    with shmipc.Heap.create(name, size=16 << 20) as h:
        yield h


def test_the_bytes_are_the_documented_layout() -> None:
    raw = _descriptor.encode(np.dtype("|u1"), (2, 3), 8, True)
    assert raw == struct.pack("<BBBBIQqq", 1, 1, 2, 0, 3, 8, 2, 3) + b"|u1"
    dt = np.dtype([("x", "<i4")])
    text = json.dumps(np.lib.format.dtype_to_descr(dt)).encode()
    raw = _descriptor.encode(dt, (), 0, False)
    assert raw == struct.pack("<BBBBIQ", 1, 2, 0, 0, len(text), 0) + text
    assert _core.ARRAY_DESCRIPTOR_VERSION == 1


@pytest.mark.parametrize("dt", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(), (0,), (4,), (2, 3, 1)])
@pytest.mark.parametrize("fortran", [False, True])
def test_every_dtype_shape_offset_and_order_round_trips(
    dt: np.dtype[Any], shape: tuple[int, ...], fortran: bool
) -> None:
    raw = _descriptor.encode(dt, shape, 24, fortran)
    _descriptor._decoded.clear()  # decoded by the engine, not read back from the cache
    _descriptor._lengths.clear()
    spec = (dt, shape, 24, fortran, int(np.prod(shape)) * dt.itemsize)
    assert _descriptor.decode(raw) == spec
    assert _descriptor.decode(bytearray(raw)) == spec
    assert _descriptor.decode_head(raw + b"data") == (spec, len(raw))
    assert _descriptor.decode_head(bytearray(raw)) == (spec, len(raw))  # its length now cached
    with pytest.raises(CorruptSegmentError):
        _descriptor.decode_head(raw[:-1])  # a cached header, a descriptor cut short


def test_object_dtypes_are_refused_both_ways() -> None:
    with pytest.raises(TypeError):
        _descriptor.encode(np.dtype(object), (1,))
    with pytest.raises(TypeError):
        _descriptor.encode(np.dtype([("a", "O")]), (1,))
    plain = struct.pack("<BBBBIQq", 1, 0, 1, 0, 3, 0, 1) + b"|O8"
    text = b'[["a", "|O8"]]'
    structured = struct.pack("<BBBBIQq", 1, 2, 1, 0, len(text), 0, 1) + text
    for raw in (plain, structured):
        with pytest.raises(CorruptSegmentError):
            _descriptor.decode(raw)


def test_the_caches_stay_bounded() -> None:
    for n in range(3 * _descriptor._CACHE_MAX):
        _descriptor.decode(_descriptor.encode(np.dtype("<f4"), (n,)))
    assert len(_descriptor._encoded) <= _descriptor._CACHE_MAX
    assert len(_descriptor._decoded) <= _descriptor._CACHE_MAX


GOOD = _descriptor.encode(np.dtype("<f8"), (2,))
BAD = [  # (an empty meta on a channel record or topic sample means "no array": 1-D uint8)
    b"1|2|0|0|s<f8",  # the former channel metadata
    b"('<f8', (2,))",  # the former shared-value metadata
    GOOD[:-1],
    GOOD + b"x",
    b"\x02" + GOOD[1:],  # version
    GOOD[:1] + b"\x04" + GOOD[2:],  # unknown flag
    GOOD[:16] + struct.pack("<q", -2) + GOOD[24:],  # negative dimension
    GOOD[:-3] + b"<x8",  # not a dtype numpy knows
    struct.pack("<BBBBIQq", 1, 2, 1, 0, 1, 0, 2) + b"[",  # not JSON
]


@pytest.mark.parametrize("raw", BAD)
def test_a_bad_descriptor_on_a_channel_record_is_corrupt(heap: shmipc.Heap, raw: bytes) -> None:
    tx, rx = heap.channel("c"), heap.channel("c")
    tx._send_bytes(b"x" * 16, raw, 5)
    with pytest.raises(CorruptSegmentError):
        rx.recv_array(timeout=5)
    tx._send_bytes(b"x" * 16, GOOD, 5)  # the channel still works
    assert rx.recv_array(timeout=5).shape == (2,)
    tx.close()
    rx.close()


@pytest.mark.parametrize("raw", BAD)
def test_a_bad_descriptor_on_a_topic_sample_is_corrupt(heap: shmipc.Heap, raw: bytes) -> None:
    pub = heap.publisher("t")
    sub = heap.subscriber("t")
    pub._publish(b"x" * 16, raw, 5)
    with pytest.raises(CorruptSegmentError):
        sub.recv_array(timeout=5)
    pub._publish(b"x" * 16, GOOD, 5)
    assert sub.recv_array(timeout=5).shape == (2,)
    sub.close()
    pub.close()


@pytest.mark.parametrize(
    "raw",
    [
        *BAD,
        b"",
        _descriptor.encode(np.dtype("<f8"), (3,)),
        _descriptor.encode(np.dtype("<f8"), (2,), 8),
    ],
)
def test_a_bad_descriptor_of_a_shared_value_is_corrupt(name: str, raw: bytes) -> None:
    with shmipc.SharedValue.create(name, size=64) as v:
        v._handle.write(3, raw, b"x" * 16)  # 3: an array value
        with pytest.raises(CorruptSegmentError):
            v.read()
        v._handle.write(3, GOOD, b"x" * 16)
        assert v.read().shape == (2,)


@pytest.mark.parametrize(
    "head",
    [
        *BAD,
        b"",
        GOOD,  # offset 0: inside the descriptor
        _descriptor.encode(np.dtype("<f8"), (3,), 32),  # more elements than bytes
        _descriptor.encode(np.dtype("<f8"), (2,), 32, True),  # Fortran order
        _descriptor.encode(np.dtype("<f8"), (2,), 40),  # elements not 16-byte aligned
        _descriptor.encode(np.dtype([("a", "<f8")]), (3,), 48),  # structured: NumPy's check
        struct.pack("<BBBBIQq", 1, 2, 1, 0, 14, 48, 2) + b'[["a", "|O8"]]',  # Python objects
    ],
)
def test_a_bad_array_entry_of_a_dict_is_corrupt(heap: shmipc.Heap, head: bytes) -> None:
    d = heap.dict("d")
    forged = head + b"\0" * (-len(head) % 16) + b"x" * 16
    d._set_raw("a", 17, forged)  # 17: an array entry (containers/dict_codec.hpp)
    with pytest.raises(CorruptSegmentError):
        d["a"]
    d["a"] = np.ones(2)
    assert d["a"].tolist() == [1.0, 1.0]
    d.close()


@pytest.mark.parametrize(
    ("tag", "raw"),
    [
        (3, b"1234567"),  # an int of 7 bytes
        (3, b"123456789"),
        (4, b""),  # a float of none
        (5, b"\x02"),  # a bool that is neither
        (16, b""),  # an empty big int
    ],
)
def test_a_bad_fixed_size_entry_of_a_dict_is_corrupt(
    heap: shmipc.Heap, tag: int, raw: bytes
) -> None:
    d = heap.dict("d")
    d._set_raw("a", tag, raw)
    with pytest.raises(CorruptSegmentError):
        d["a"]
    with pytest.raises(CorruptSegmentError):
        d.copy()
    d["a"] = 1 << 70
    assert d["a"] == 1 << 70
    d.close()


@pytest.mark.parametrize(
    "n", [1 << 63, -(1 << 63) - 1, -(1 << 71), (1 << 71) - 1, -(1 << 64), 1 << 200, -(3**90)]
)
def test_big_ints_round_trip(heap: shmipc.Heap, n: int) -> None:
    d = heap.dict("d")
    d["a"] = n
    assert d["a"] == n and type(d["a"]) is int
    d.close()


def test_an_entry_of_an_unknown_tag_is_refused_as_a_newer_writers(heap: shmipc.Heap) -> None:
    d = heap.dict("d")
    d._set_raw("a", 99, b"x")
    with pytest.raises(ValueError, match="unknown type tag 99"):
        d["a"]
    d.close()


@pytest.mark.parametrize("dt", DTYPES, ids=str)
def test_every_kind_carries_every_dtype(dt: np.dtype[Any], heap: shmipc.Heap, name: str) -> None:
    a = _sample(dt)
    f = np.asfortranarray(_sample(dt, (3, 4)))
    tx, rx = heap.channel("c"), heap.channel("c")
    for x in (a, f):
        tx.send_array(x)
        got = rx.recv_array(timeout=5)
        assert got.dtype == dt and got.shape == x.shape and _same(got, x)
    tx.close()
    rx.close()
    pub, sub = heap.publisher("t"), heap.subscriber("t")
    pub.publish_array(f)
    got = sub.recv_array(timeout=5)
    assert got.dtype == dt and _same(got, f) and got.flags.f_contiguous
    del got
    sub.close()
    pub.close()
    d = heap.dict("d")
    d["a"] = f
    got = d["a"]
    assert got.dtype == dt and got.shape == f.shape and _same(got, f)
    d.close()
    with shmipc.SharedValue.create(name + "v", size=4096) as v:
        v.write(f)
        got = v.read()
        assert got.dtype == dt and got.shape == f.shape and _same(got, f)
    a_, b_ = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a_, b_:
        shmipc.send_array(a_, f)
        got = shmipc.recv_array(b_, timeout=5)
        assert got.dtype == dt and _same(got, f) and got.flags.f_contiguous
