"""NumPy arrays in shared memory that multiprocessing hands over as views (API.md §10).

``shmipc.zeros/empty/full/asarray`` return a :class:`ndarray` (a NumPy subclass) whose memory
is a memfd-backed :class:`~shmipc.Buffer`. The array and every view or slice of it pickle for
multiprocessing (spawn, forkserver, fork; Process arguments, Pool, ProcessPoolExecutor,
Queue/Pipe) as (fd, dtype, shape, strides, offset): the receiving process maps the same memory,
so writes on either side are seen by the other. One mapping per memfd per process: a second
slice of the same array that arrives maps nothing new.

Results of arithmetic (``a + 1``, ``a.sum()``) live in private memory and are plain NumPy
arrays. Plain ``pickle.dumps`` of a shared array outside multiprocessing raises TypeError,
as for every anonymous shmipc object.
"""

from __future__ import annotations

import os
import weakref
from multiprocessing import reduction
from typing import Any, Literal

import numpy as np

from . import _core
from ._buffer import Buffer

__all__ = ["ndarray", "zeros", "empty", "full", "asarray", "zeros_like", "full_like"]

# (st_dev, st_ino) of a memfd -> this process's Buffer mapping it (one mapping per file).
_mappings: weakref.WeakValueDictionary[tuple[int, int], Buffer] = weakref.WeakValueDictionary()


class ndarray(np.ndarray):  # noqa: N801 - the NumPy name, as numpy.ndarray
    """A NumPy array in shared memory (see the module docs). Create one with
    :func:`shmipc.zeros`, :func:`shmipc.empty`, :func:`shmipc.full` or :func:`shmipc.asarray`.
    """

    def __array_wrap__(
        self, arr: np.ndarray, context: Any = None, return_scalar: bool = False
    ) -> Any:
        # Ufunc results: shared only if they were written into shared memory (out=...).
        if _buffer_of(arr) is None:
            plain = arr.view(np.ndarray)
            return plain[()] if return_scalar else plain
        return super().__array_wrap__(arr, context, return_scalar)

    @property
    def shared(self) -> bool:
        """True if this array views shared memory (False for e.g. a ``.copy()``)."""
        return _buffer_of(self) is not None

    def __reduce_ex__(self, protocol: Any) -> Any:
        if _buffer_of(self) is None:  # private memory (a copy): an ordinary ndarray
            return np.asarray(self).view(np.ndarray).__reduce_ex__(protocol)
        raise TypeError(
            "a shmipc.ndarray cannot be pickled outside multiprocessing: its memory is anonymous "
            "shared memory that travels by fd. Pass it (or a slice) to a multiprocessing "
            "Process, Pool, ProcessPoolExecutor, Queue or Pipe, or pickle np.asarray(a).copy()."
        )

    def __repr__(self) -> str:
        return "shmipc." + repr(self.view(np.ndarray))


def _buffer_of(a: Any) -> Buffer | None:
    """The shmipc Buffer an array views (through ndarray bases and Buffer views), or None."""
    obj: Any = a
    for _ in range(64):  # bounded: base chains are short
        if isinstance(obj, _core.Buffer):
            return None if obj.closed else obj  # type: ignore[return-value]
        if isinstance(obj, np.ndarray):
            obj = obj.base
        elif isinstance(obj, _core.BufferView):
            obj = obj.buffer
        elif isinstance(obj, memoryview):
            obj = obj.obj
        else:
            return None
    return None


def _register(buf: Buffer) -> None:
    st = os.fstat(buf.fileno())
    _mappings[(st.st_dev, st.st_ino)] = buf


def _new(shape: Any, dtype: Any, order: str, zero: bool) -> ndarray:
    dt = np.dtype(dtype)
    if dt.hasobject:
        raise TypeError("object dtypes cannot live in shared memory")
    if order not in ("C", "F"):
        raise ValueError("order must be 'C' or 'F'")
    shape = (int(shape),) if np.ndim(shape) == 0 else tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"negative dimensions are not allowed: {shape}")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    buf = Buffer(nbytes, _zero=zero)
    buf._mark_shared()  # other processes will map it: the pool must never reuse it
    _register(buf)
    flat = buf._view(np.dtype(np.uint8), (nbytes,), False, 0, True)
    layout: Literal["C", "F"] = "F" if order == "F" else "C"
    out: ndarray = np.ndarray.__new__(ndarray, shape, dt, buffer=flat, offset=0, order=layout)
    return out


def empty(shape: Any, dtype: Any = float, order: str = "C") -> ndarray:
    """An uninitialised shared array (a fresh memfd reads as zeros)."""
    return _new(shape, dtype, order, zero=False)


def zeros(shape: Any, dtype: Any = float, order: str = "C") -> ndarray:
    """A shared array of zeros."""
    return _new(shape, dtype, order, zero=True)


def full(shape: Any, fill_value: Any, dtype: Any = None, order: str = "C") -> ndarray:
    """A shared array filled with ``fill_value``."""
    if dtype is None:
        dtype = np.array(fill_value).dtype
    out = _new(shape, dtype, order, zero=False)
    out.fill(fill_value)
    return out


def zeros_like(a: Any, dtype: Any = None) -> ndarray:
    """A shared array of zeros with the shape (and dtype) of ``a``."""
    a = np.asarray(a)
    return zeros(a.shape, dtype or a.dtype, "F" if _fortran(a) else "C")


def full_like(a: Any, fill_value: Any, dtype: Any = None) -> ndarray:
    """A shared array like ``a`` filled with ``fill_value``."""
    a = np.asarray(a)
    return full(a.shape, fill_value, dtype or a.dtype, "F" if _fortran(a) else "C")


def asarray(x: Any, dtype: Any = None, order: str | None = None) -> ndarray:
    """``x`` as a shared array: ``x`` itself if it already is one (of that dtype), else one
    copy into new shared memory."""
    if isinstance(x, ndarray) and _buffer_of(x) is not None:
        if (dtype is None or np.dtype(dtype) == x.dtype) and (
            order is None
            or (order == "C" and x.flags.c_contiguous)
            or (order == "F" and x.flags.f_contiguous)
        ):
            return x
    src = np.asarray(x, dtype=dtype)
    out = empty(src.shape, src.dtype, order or ("F" if _fortran(src) else "C"))
    np.copyto(out, src, casting="no")
    return out


def _fortran(a: np.ndarray) -> bool:
    return bool(a.ndim > 1 and a.flags.f_contiguous and not a.flags.c_contiguous)


# --- multiprocessing ----------------------------------------------------------------------


def _reduce_for_mp(a: ndarray) -> Any:
    buf = _buffer_of(a)
    if buf is None:  # private memory: pickled by value like any ndarray
        return np.asarray(a).view(np.ndarray).__reduce_ex__(5)
    buf._mark_shared()
    offset = int(a.__array_interface__["data"][0]) - buf._address if buf.nbytes else 0
    state = (buf.nbytes, a.dtype, a.shape, a.strides, offset)
    return _rebuild, (reduction.DupFd(buf.fileno()), state)


def _rebuild(dupfd: Any, state: tuple[int, np.dtype[Any], Any, Any, int]) -> ndarray:
    nbytes, dtype, shape, strides, offset = state
    fd = dupfd.detach()
    try:
        st = os.fstat(fd)
        buf = _mappings.get((st.st_dev, st.st_ino))
        if buf is None or buf.closed or buf.nbytes < nbytes:
            buf = Buffer(_core.share_fd(fd, nbytes))
            fd = -1  # the Buffer owns it now
            _register(buf)
    finally:
        if fd >= 0:
            os.close(fd)
    flat = buf._view(np.dtype(np.uint8), (buf.nbytes,), False, 0, not buf.readonly)
    # numpy checks that shape/strides/offset stay inside the buffer (ValueError otherwise).
    out: ndarray = np.ndarray.__new__(
        ndarray, shape, dtype, buffer=flat, offset=offset, strides=strides
    )
    return out


reduction.register(ndarray, _reduce_for_mp)
