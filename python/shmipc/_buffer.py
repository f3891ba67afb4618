"""Buffers over memfd and their transport over Unix sockets by fd passing (API.md section 1)."""

from __future__ import annotations

import json
import math
import socket
import sys
from typing import Any

import numpy as np

from . import _core, _descriptor, _validate
from ._errors import CorruptSegmentError
from ._multiprocessing import register_fd_reducer

__all__ = ["Buffer", "send", "recv", "send_array", "recv_array", "Meta"]

Meta = bytes | dict[str, Any] | None
SocketLike = socket.socket | int

_META_BYTES = b"B"
_META_JSON = b"J"


def _encode_meta(meta: Meta) -> bytes:
    if meta is None:
        return b""
    if isinstance(meta, (bytes, bytearray, memoryview)):
        out = _META_BYTES + bytes(meta)
    elif isinstance(meta, dict):
        out = _META_JSON + json.dumps(meta, separators=(",", ":")).encode()
    else:
        raise TypeError(f"meta must be bytes or a JSON-able dict, not {type(meta).__name__}")
    if len(out) - 1 > 64 * 1024:
        raise ValueError(f"meta is {len(out) - 1} bytes; at most 65536 may travel with a buffer")
    return out


def _decode_meta(raw: bytes) -> Meta:
    if not raw:
        return None
    if raw[:1] == _META_BYTES:
        return raw[1:]
    if raw[:1] == _META_JSON:
        try:
            value = json.loads(raw[1:])
        except ValueError as e:
            raise _core_corrupt(f"undecodable meta: {e}") from None
        if not isinstance(value, dict):
            raise _core_corrupt("meta is not a dict")
        return value
    raise _core_corrupt("unknown meta encoding")


def _core_corrupt(msg: str) -> Exception:
    return CorruptSegmentError(msg)


def array_spec(
    nbytes: int, dtype: Any, shape: Any, order: str, what: str
) -> tuple[np.dtype[Any], tuple[int, ...]]:
    """Checks that an array of `dtype`/`shape` fits `nbytes` of shared memory (the whole
    `what` when shape is None); returns the dtype and shape as numpy wants them."""
    dt = np.dtype(dtype)
    if dt.hasobject:
        raise TypeError("object dtypes cannot live in shared memory")
    if order not in ("C", "F"):
        raise ValueError("order must be 'C' or 'F'")
    if shape is None:
        if dt.itemsize == 0 or nbytes % dt.itemsize:
            raise ValueError(f"{what} of {nbytes} bytes is not a whole number of {dt}")
        shape = (nbytes // dt.itemsize,)
    shape = (int(shape),) if np.ndim(shape) == 0 else tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"negative dimension in shape {shape}")
    need = math.prod(shape) * dt.itemsize
    if need > nbytes:
        raise ValueError(f"shape {shape} of {dt} needs {need} bytes; the {what} has {nbytes}")
    return dt, shape


class Buffer(_core.Buffer):
    """A block of shared memory backed by a memfd.

    Zero-filled and writable when created. Supports the buffer protocol with zero copies
    (``memoryview(buf)``, ``np.frombuffer(buf)``); views keep the memory alive after
    ``close()``. Sending a buffer moves it: the sender's mapping becomes read-only.
    """

    meta: Meta

    def __init__(self, nbytes: int | _core.PendingBuffer, *, _zero: bool = True) -> None:
        if isinstance(nbytes, _core.PendingBuffer):
            super().__init__(nbytes)
        else:
            super().__init__(_validate.integer(nbytes, "nbytes"), _zero)
        self.meta = None

    @classmethod
    def from_bytes(cls, obj: Any) -> Buffer:
        """A new buffer holding one copy of any buffer-protocol object."""
        src = memoryview(obj).cast("B")
        buf = cls(src.nbytes, _zero=False)
        if src.nbytes:
            with memoryview(buf) as dst:
                dst[:] = src
        return buf

    def as_array(self, dtype: Any = np.uint8, shape: Any = None, order: str = "C") -> np.ndarray:
        """An ndarray view onto the buffer (zero copy); it keeps the buffer's memory alive."""
        self._check_open()
        dt, shape = array_spec(self.nbytes, dtype, shape, order, "buffer")
        return self._view(dt, shape, order == "F", 0, True)

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("Buffer is closed")

    def fileno(self) -> int:
        return int(super().fileno())

    def close(self) -> None:
        """Releases the buffer. Existing views keep the memory mapped until they are gone."""
        self._close()

    def __enter__(self) -> Buffer:
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self.nbytes)

    def __repr__(self) -> str:
        state = (
            "closed"
            if self.closed
            else (
                "sealed"
                if self.sealed
                else ("moved" if self.moved else ("read-only" if self.readonly else "writable"))
            )
        )
        return f"<shmipc.Buffer nbytes={self.nbytes} {state}>"

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(
            "shmipc.Buffer cannot be pickled outside multiprocessing: it is anonymous shared "
            "memory that travels by fd. Pass it to a multiprocessing Process, Queue or Pipe, or "
            "use shmipc.send()/recv() over a Unix socket."
        )

    def _mp_state(self) -> tuple[int, Any]:
        self._check_open()
        self._mark_shared()  # the child maps these bytes: never reuse them for a new buffer
        return self.nbytes, self.meta

    @classmethod
    def _mp_rebuild(cls, fd: int, state: tuple[int, Any]) -> Buffer:
        nbytes, meta = state
        buf = cls(_core.share_fd(fd, nbytes))
        buf.meta = meta
        return buf


register_fd_reducer(Buffer)


def _sockfd(sock: SocketLike) -> int:
    if isinstance(sock, socket.socket):
        fd = sock.fileno()
        if fd < 0:
            raise ValueError("socket is closed")
        return fd
    if isinstance(sock, int) and not isinstance(sock, bool):
        return sock
    if hasattr(sock, "fileno"):
        return int(sock.fileno())
    raise TypeError(f"expected a socket.socket or an int fd, not {type(sock).__name__}")


def send(sock: SocketLike, buf: Buffer, meta: Meta = None) -> None:
    """Moves ``buf`` to the process at the other end of a Unix socket (zero copy).

    Afterwards the sender's mapping is read-only. Raises BufferError while writable views
    of ``buf`` exist in this process.
    """
    if not isinstance(buf, _core.Buffer):
        raise TypeError(f"send() takes a shmipc.Buffer, not {type(buf).__name__}")
    _core.send_buffer(_sockfd(sock), buf, _encode_meta(meta), b"", 0)


def _adopt(pending: _core.PendingBuffer, meta_raw: bytes) -> Buffer:
    buf = Buffer(pending)
    buf.meta = _decode_meta(meta_raw)
    return buf


def recv(sock: SocketLike, timeout: float | None = None) -> Buffer:
    """Receives one Buffer (writable for the receiver). EOFError if the peer closed."""
    pending, meta_raw, desc = _core.recv_buffer(_sockfd(sock), timeout)
    buf = _adopt(pending, meta_raw)
    if desc:
        buf.close()
        raise _core_corrupt("received an array message; use recv_array()")
    return buf


# ---------------------------------------------------------------------------------------------
# arrays: the message's descriptor is the one of every kind (_descriptor, base/array_descriptor)


def _buffer_behind(arr: np.ndarray) -> tuple[_core.Buffer | None, list[Any]]:
    """The shmipc Buffer an array views (through ndarray bases, our views and memoryviews)."""
    chain: list[Any] = []
    obj: Any = arr
    while True:
        chain.append(obj)
        if isinstance(obj, _core.Buffer):
            return obj, chain
        if isinstance(obj, np.ndarray):
            obj = obj.base
        elif isinstance(obj, _core.BufferView):
            obj = obj.buffer
        elif isinstance(obj, memoryview):
            obj = obj.obj
        else:
            return None, chain


def _base_of(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.base
    if isinstance(obj, _core.BufferView):
        return obj.buffer
    if isinstance(obj, memoryview):
        return obj.obj
    return None


def _others_hold(chain: list[Any]) -> bool:
    """True if anything outside ``chain`` references one of its intermediate objects (e.g.
    a second ndarray made from the same base): it could still write after the move."""
    for i in range(1, len(chain) - 1):
        o = chain[i]
        holders = sum(1 for p in chain if _base_of(p) is o)
        # references we know of: the `chain` list, the local `o`, getrefcount's argument
        if sys.getrefcount(o) - 3 - holders > 0:
            return True
    return False


def _writable_link(o: Any) -> bool:
    return (isinstance(o, _core.BufferView) and o.writable) or (
        isinstance(o, memoryview) and not o.readonly
    )


def send_array(sock: SocketLike, arr: Any, meta: Meta = None) -> None:
    """Sends an ndarray with its dtype and shape.

    Zero copy if ``arr`` views a shmipc Buffer (the buffer is moved: this process's views
    become read-only); otherwise one copy into a pooled buffer. Non-contiguous arrays are sent
    contiguous; object dtypes raise TypeError.
    """
    a = arr if isinstance(arr, np.ndarray) else np.asarray(arr)
    if a.dtype.hasobject:
        raise TypeError("arrays of object dtype cannot be sent through shared memory")
    fd = _sockfd(sock)
    fortran = a.ndim > 1 and a.flags.f_contiguous and not a.flags.c_contiguous
    buf, chain = _buffer_behind(a)
    if buf is not None and a.nbytes > 0 and (a.flags.c_contiguous or a.flags.f_contiguous):
        # Writable views held by this array's own chain are ours to make read-only; any other
        # writable view would keep writing into memory the receiver now owns.
        others = _others_hold(chain)
        own = sum(1 for o in chain if _writable_link(o))
        if others or buf._writable_exports > own:
            raise BufferError(
                "cannot send: other writable views of this array's shmipc.Buffer exist in this "
                "process (delete them, or send a copy)"
            )
        offset = a.__array_interface__["data"][0] - buf._address
        _core.send_buffer(
            fd, buf, _encode_meta(meta), _descriptor.encode(a.dtype, a.shape, offset, fortran), own
        )
        for o in chain:
            if isinstance(o, np.ndarray):
                o.flags.writeable = False
            elif isinstance(o, _core.BufferView):
                o._downgrade()
        return
    tmp = Buffer(a.nbytes, _zero=False)
    try:
        if a.nbytes:
            dst = tmp._view(a.dtype, a.shape, fortran, 0, True)
            np.copyto(dst, a, casting="no")
            del dst
        _core.send_buffer(
            fd, tmp, _encode_meta(meta), _descriptor.encode(a.dtype, a.shape, 0, fortran), 0
        )
    finally:
        tmp.close()


def recv_array(sock: SocketLike, timeout: float | None = None) -> np.ndarray:
    """Receives an array sent by send_array: an ndarray view onto the received memory.

    The view keeps the memory alive; it returns to this process's pool when the array (and
    every view of it) is garbage-collected.
    """
    pending, meta_raw, desc = _core.recv_buffer(_sockfd(sock), timeout)
    buf = _adopt(pending, meta_raw)
    try:
        if not desc:
            raise _core_corrupt("received a plain buffer; use recv()")
        dtype, shape, offset, fortran, nbytes = _descriptor.decode(desc)
        if offset + nbytes > buf.nbytes:
            raise _core_corrupt("array descriptor does not fit the received buffer")
        return buf._view(dtype, shape, fortran, offset, True)
    except BaseException:
        buf.close()
        raise
