"""Python objects with their large buffers out of band, through shared memory (API.md §10).

Objects are pickled with protocol 5. Every buffer of at least :data:`OOB_THRESHOLD` bytes that
pickle hands out of band (NumPy arrays, ``pickle.PickleBuffer``, pandas and pyarrow buffers)
plus large ``bytes``/``bytearray`` found in plain containers travels through shared memory
instead of inside the pickle:

- ``MessageQueue.put/get``: each buffer is copied once into a block of the queue's companion
  heap (``/dev/shm/<queue>.oob``, created with the queue). The block is *held* by the heap
  while the message is in flight (it survives its producer) and taken by exactly one consumer,
  whose arrays view it; the block is freed when they are garbage-collected, and reclaimed if
  that consumer dies. The queue message carries only the in-band pickle and (offset, length)
  pairs, so ``max_message_size`` limits the in-band part only.
- ``Channel.send_obj/recv_obj``: each buffer is one channel record (a block of the channel's
  heap) followed by a record with the in-band pickle. A buffer that already is the sole view of
  a Block of the channel's heap moves with no copy at all (as in ``send_array``).

The receiver's arrays view shared memory. ``bytes`` and ``bytearray`` arrive as objects of
their own type, which own their memory: one copy out of the block (and the block is freed at
once).
"""

from __future__ import annotations

import io
import pickle
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._block import _address, _block_of, _make_readonly, _sole_view
from ._errors import CorruptSegmentError
from ._ndarray import ndarray

if TYPE_CHECKING:
    from ._heap import Heap

__all__ = ["OOB_THRESHOLD", "dumps", "encode_queue_message", "decode_queue_message"]

OOB_THRESHOLD = 64 << 10  # bytes: smaller buffers stay in band (a block costs more than a copy)
_PROTOCOL = 5

# --- pickling -------------------------------------------------------------------------------


class _BigBytes:
    """Stands for a large bytes/bytearray in a container while pickling: its bytes go out of
    band, and unpickling rebuilds an object of the original type."""

    __slots__ = ("obj",)

    def __init__(self, obj: bytes | bytearray) -> None:
        self.obj = obj

    def __reduce_ex__(self, protocol: Any) -> Any:
        return (type(self.obj), (pickle.PickleBuffer(self.obj),))


_WALK_LIMIT = 10_000  # elements visited looking for large bytes; beyond it, the rest stays as is


def _wrap_bytes(obj: Any) -> Any:
    """``obj`` with every large bytes/bytearray inside plain dicts, lists and tuples (the usual
    message shapes) replaced by a :class:`_BigBytes`; ``obj`` itself if there is none.

    pickle never offers bytes to a buffer callback (and bytearray only through
    ``reducer_override``, which would slow every object down), hence this bounded walk.
    """
    return _walk(obj, 0, [_WALK_LIMIT])


def _walk(o: Any, depth: int, budget: list[int]) -> Any:
    t = type(o)
    if t in _ATOMS:
        return o
    if t is bytes or t is bytearray:
        return _BigBytes(o) if len(o) >= OOB_THRESHOLD else o
    if depth > 8 or budget[0] <= 0:
        return o
    if t is dict:
        if _ATOMS.issuperset(map(type, o.values())):  # the common flat case, at C speed
            return o
        budget[0] -= len(o)
        out = None
        for k, v in o.items():
            w = _walk(v, depth + 1, budget)
            if w is not v:
                if out is None:
                    out = dict(o)
                out[k] = w
        return o if out is None else out
    if t is list or t is tuple:
        if _ATOMS.issuperset(map(type, o)):
            return o
        budget[0] -= len(o)
        items = None
        for i, v in enumerate(o):
            w = _walk(v, depth + 1, budget)
            if w is not v:
                if items is None:
                    items = list(o)
                items[i] = w
        if items is None:
            return o
        return items if t is list else tuple(items)
    return o


def dumps(obj: Any) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Pickles ``obj`` (protocol 5): the in-band bytes, and the buffers left out of band (each
    at least OOB_THRESHOLD bytes and contiguous)."""
    t = type(obj)
    if (
        t in _ATOMS
        or ((t is tuple or t is list) and _ATOMS.issuperset(map(type, obj)))
        or (t is dict and _ATOMS.issuperset(map(type, obj.values())))
    ):
        return pickle.dumps(obj, _PROTOCOL), []  # no buffers possible: pickle's own speed
    buffers: list[pickle.PickleBuffer] = []

    def callback(pb: pickle.PickleBuffer) -> bool:
        try:
            n = pb.raw().nbytes
        except BufferError:  # not contiguous: pickle copies it in band
            return True
        if n < OOB_THRESHOLD:
            return True
        buffers.append(pb)
        return False

    wrapped = _wrap_bytes(obj)
    try:
        # The fast path: pickle's own reducers (a message of small objects costs what
        # pickle.dumps costs).
        data = pickle.dumps(wrapped, _PROTOCOL, buffer_callback=callback)
        if len(data) < OOB_THRESHOLD:
            return data, buffers
    except TypeError:
        pass  # e.g. a shmipc.ndarray, which only multiprocessing pickles by itself
    # A large in-band part may hold non-contiguous arrays: pickle again with reducers that send
    # them (and shmipc.ndarrays) out of band.
    buffers.clear()
    out = io.BytesIO()
    pickler = pickle.Pickler(out, _PROTOCOL, buffer_callback=callback)
    pickler.dispatch_table = _dispatch()
    pickler.dump(wrapped)
    return out.getvalue(), buffers


_ATOMS = frozenset({int, float, str, bool, type(None), complex})


_dispatch_table: Any = None


def _dispatch() -> Any:
    """copyreg's reducers, plus: a shmipc.ndarray (whose own pickling refuses anything but
    multiprocessing) travels as a plain array, its buffer out of band."""
    global _dispatch_table
    if _dispatch_table is None:
        import collections
        import copyreg

        import numpy as np

        _dispatch_table = collections.ChainMap(
            {ndarray: _reduce_plain, np.ndarray: _reduce_plain}, copyreg.dispatch_table
        )
    return _dispatch_table


def _reduce_plain(a: Any) -> Any:
    """A plain array's reduction; a large non-contiguous one is made contiguous first, so that
    its buffer too goes out of band (numpy would pickle it in band)."""
    import numpy as np

    if type(a) is not np.ndarray:
        a = np.asarray(a).view(np.ndarray)
    if (
        a.nbytes >= OOB_THRESHOLD
        and not a.flags.c_contiguous
        and not a.flags.f_contiguous
        and not a.dtype.hasobject
    ):
        a = np.ascontiguousarray(a)
    return a.__reduce_ex__(_PROTOCOL)


def loads(data: Any, buffers: list[Any]) -> Any:
    return pickle.loads(data, buffers=buffers)


# --- queue messages -------------------------------------------------------------------------
#
# A message with out-of-band buffers (a plain pickle always starts with b"\x80", PROTO):
#   magic b"\x00SHO" | version u8 (1) | count u32 | count x (offset u64, start u64, nbytes u64)
#   | pickle
# Each buffer is bytes [start, start + nbytes) of the block at `offset` of the queue's companion
# heap, held by the heap (kOwnerHeld) while the message is queued.

_MAGIC = b"\x00SHO"
_HEAD = struct.Struct("<4sBI")
_REF = struct.Struct("<QQQ")


def queue_header_size(count: int) -> int:
    return _HEAD.size + _REF.size * count


def encode_queue_message(
    heap: Heap, data: bytes, buffers: list[pickle.PickleBuffer]
) -> tuple[bytes, list[tuple[int, int, int]]]:
    """Copies each buffer into a block of ``heap`` and hands the blocks to the heap (held);
    returns the queue message and the (offset, start, nbytes) refs (for :func:`drop_refs` if
    the message cannot be put). An array that is the sole view of a block of ``heap`` (e.g. one
    this process got from the queue) moves with no copy and becomes read-only here."""
    refs: list[tuple[int, int, int]] = []
    moved: list[Any] = []
    try:
        for pb in buffers:
            with pb.raw() as src:
                n = src.nbytes
                obj: Any = src.obj
            move = _movable(obj, heap, n)
            if move is not None:
                blk, start = move
                refs.append((heap._hold_block(blk, True), start, n))
                moved.append(obj)
                continue
            with pb.raw() as src:
                blk = heap.allocate(n)
                with memoryview(blk) as dst:
                    dst[:] = src.cast("B") if src.format != "B" or src.ndim != 1 else src
            refs.append((heap._hold_block(blk), 0, n))
    except BaseException:
        drop_refs(heap, refs)
        raise

    for obj in moved:
        _make_readonly(obj)  # its memory is the message's now
    out = io.BytesIO()
    out.write(_HEAD.pack(_MAGIC, 1, len(refs)))
    for ref in refs:
        out.write(_REF.pack(*ref))
    out.write(data)
    return out.getvalue(), refs


def _movable(obj: Any, heap: Any, n: int) -> tuple[Any, int] | None:
    """(block, start) if ``obj`` is an ndarray that is the sole view of a Block of ``heap``
    (so the block can move instead of being copied), else None."""
    if not _is_ndarray(obj) or not obj.flags.writeable:
        return None

    blk = _block_of(obj)
    if blk is None or blk.heap is not heap or blk._exports != 1 or not _sole_view(obj):
        return None
    start = _address(obj) - blk._address
    if start < 0 or start + n > blk.nbytes:
        return None
    return blk, start


def drop_refs(heap: Heap, refs: list[tuple[int, int, int]]) -> None:
    """Frees held blocks of a message that was never put."""
    for off, start, n in refs:
        try:
            heap._take_held(off, start + n).release()
        except Exception:  # noqa: BLE001 - best effort: the heap may be closed or scribbled
            pass


def is_oob_message(raw: bytes) -> bool:
    return raw[:4] == _MAGIC


def decode_queue_message(raw: bytes, heap_of: Callable[[], Heap | None]) -> Any:
    """Unpickles a queue message; out-of-band buffers become Blocks of the companion heap
    (``heap_of()``) owned by this process, viewed by the returned object."""
    try:
        magic, version, count = _HEAD.unpack_from(raw)
    except struct.error:
        raise CorruptSegmentError("truncated object message on the queue") from None
    if magic != _MAGIC:
        raise CorruptSegmentError("a queue message that is neither a pickle nor an object")
    if version != 1:
        raise CorruptSegmentError(f"object message version {version} is not supported")
    start = queue_header_size(count)
    if start > len(raw):
        raise CorruptSegmentError(f"object message announces {count} buffers it does not hold")
    heap = heap_of()
    if heap is None:
        raise CorruptSegmentError(
            "the message's buffers live in the queue's companion heap, which does not exist"
        )
    blocks = []
    for i in range(count):
        off, first, n = _REF.unpack_from(raw, _HEAD.size + _REF.size * i)
        try:
            blk = heap._take_held(off, first + n)
            blocks.append(blk if first == 0 else memoryview(blk)[first : first + n])
        except CorruptSegmentError:
            raise
        except (ValueError, OverflowError, TypeError) as e:
            raise CorruptSegmentError(f"bad buffer reference in an object message: {e}") from None
    with memoryview(raw) as mv:
        return loads(mv[start:], blocks)


# --- channel records ------------------------------------------------------------------------
#
# send_obj sends each out-of-band buffer as a record whose meta is _BUF_TAG + (start, nbytes)
# (the buffer is bytes [start, start + nbytes) of the record's block), then the in-band pickle
# as a record whose meta is _OBJ_TAG + count. Array records (send_array) have array descriptors
# as metas (_descriptor), whose first byte is their version (1), so neither can be mistaken for
# the other.

_BUF_TAG = b"\x00ob"
_OBJ_TAG = b"\x00oo"
_BUF_META = struct.Struct("<3sQQ")
_OBJ_META = struct.Struct("<3sI")


def buf_meta(start: int, nbytes: int) -> bytes:
    return _BUF_META.pack(_BUF_TAG, start, nbytes)


def obj_meta(count: int) -> bytes:
    return _OBJ_META.pack(_OBJ_TAG, count)


def parse_record_meta(meta: bytes | None) -> tuple[str, int, int]:
    """("buf", start, nbytes), ("obj", count, 0), or raises CorruptSegmentError."""
    if meta is not None and meta[:3] == _BUF_TAG and len(meta) == _BUF_META.size:
        _, start, n = _BUF_META.unpack(meta)
        return "buf", start, n
    if meta is not None and meta[:3] == _OBJ_TAG and len(meta) == _OBJ_META.size:
        _, count = _OBJ_META.unpack(meta)
        return "obj", count, 0
    raise CorruptSegmentError(
        "recv_obj() got a record that send_obj() did not send (use recv/recv_array for it)"
    )


class Deadline:
    """Remaining time of a timeout spread over several waits."""

    __slots__ = ("end",)

    def __init__(self, timeout: float | None) -> None:
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be >= 0 or None")
        self.end = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        if self.end is None:
            return None
        return max(0.0, self.end - time.monotonic())


# --- channels -------------------------------------------------------------------------------


def channel_send_obj(ch: Any, obj: Any, timeout: float | None) -> None:
    """Channel.send_obj: the out-of-band buffers as records, then the in-band pickle."""

    deadline = Deadline(timeout)
    data, buffers = dumps(obj)
    for pb in buffers:
        with pb.raw() as raw:
            n = raw.nbytes
            src: Any = raw.obj
        # Zero copy: the sole view of a Block of this heap moves (its block is released here
        # and the array becomes read-only, as with send_array); anything else is one copy.
        blk = _block_of(src) if _is_ndarray(src) else None
        if (
            blk is not None
            and blk.heap is ch._heap
            and blk._exports == 1
            and src.flags.writeable
            and _sole_view(src)
        ):
            start = _address(src) - blk._address
            if 0 <= start and start + n <= blk.nbytes:
                del pb
                ch._send_block(blk, buf_meta(start, n), deadline.remaining(), True)
                _make_readonly(src)
                continue
        with pb.raw() as raw:
            ch._send_bytes(raw.cast("B"), buf_meta(0, n), deadline.remaining())
    ch._send_bytes(data, obj_meta(len(buffers)), deadline.remaining())


def _is_ndarray(o: Any) -> bool:
    import numpy as np

    return isinstance(o, np.ndarray)


def channel_recv_obj(ch: Any, timeout: float | None) -> Any:
    """Channel.recv_obj: gathers buffer records until the object record that closes them.

    Buffer records that arrived before a timeout wait in the handle for the next call; records
    left over by a send_obj that failed half-way (its object record never came) are dropped
    when the next object record tells how many buffers belong to it.
    """
    deadline = Deadline(timeout)
    parts: list[Any] = ch.__dict__.setdefault("_obj_parts", [])
    while True:
        try:
            blk, meta = ch._recv_message(deadline.remaining())
        except EOFError:
            parts.clear()  # a send_obj cut short by the sender's end: its buffers go
            raise
        kind, a, b = parse_record_meta(meta)
        if kind == "buf":
            if a + b > blk.nbytes:
                blk.release()
                raise CorruptSegmentError("buffer record is smaller than it announces")
            parts.append(blk if a == 0 and b == blk.nbytes else memoryview(blk)[a : a + b])
            continue
        count = a
        if count > len(parts):
            parts.clear()
            blk.release()
            raise CorruptSegmentError(
                f"object record announces {count} buffers; {len(parts)} came before it"
            )
        mine = parts[len(parts) - count :]
        parts.clear()
        try:
            with memoryview(blk) as mv:
                return loads(mv, mine)
        finally:
            del mine
            blk.release()
