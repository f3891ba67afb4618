"""A dict shared by every process of a heap (API.md section 6): ``heap.dict(name)``.

The map lives in the heap (``src/ipc_core/containers/shared_dict.hpp``): a hash table of immutable
entries, each published with one store under a robust process-shared lock, so every operation
is atomic with respect to other processes, and a process killed at any moment (SIGKILL
included) neither wedges the others nor leaves a half-written entry. Values are copied in and
out (like ``multiprocessing.Manager().dict()``, without a server process).
"""

from __future__ import annotations

import math
from collections.abc import (
    ItemsView,
    Iterator,
    KeysView,
    Mapping,
    MutableMapping,
    ValuesView,
)
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _core, _descriptor
from ._errors import CorruptSegmentError

if TYPE_CHECKING:
    from ._heap import Heap

__all__ = ["SharedDict", "Value"]

Value = bytes | str | int | float | np.ndarray
"""What a SharedDict stores (bool is kept as bool; bytearray/memoryview come back as bytes)."""

# What the entries' bytes mean is the dict value codec of the engine
# (src/ipc_core/containers/dict_codec.hpp), applied by src/bindings/bind_dict.cpp. These two
# helpers only supply what NumPy knows: the plain value the codec stores for a value of another
# type, and the ndarray of a decoded array entry.


def _to_plain(value: object) -> object:
    """A value the codec stores for ``value`` (a NumPy scalar's item, bytes of a bytearray or
    memoryview) or, for an ndarray, (dtype text, structured, shape, C-ordered bytes)."""
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError("arrays of Python objects cannot be stored in a SharedDict")
        text, structured = _descriptor.describe(value.dtype)
        flat = np.ascontiguousarray(value).reshape(-1).view(np.uint8)
        return text, structured, value.shape, flat
    if isinstance(value, np.generic) and not value.dtype.hasobject:
        item = value.item()
        if isinstance(item, (bool, int, float)):
            return item
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(
        "SharedDict values are bytes, str, int, float, bool or numpy.ndarray, "
        f"not {type(value).__name__}"
    )


def _array_from(
    text: str, structured: bool, shape: tuple[int, ...], entry: bytearray, offset: int
) -> np.ndarray:
    """The ndarray of an array entry the codec decoded (its elements from ``offset`` on)."""
    dt = _descriptor.dtype_of(text, structured)  # CorruptSegmentError if NumPy refuses it
    if offset + math.prod(shape) * dt.itemsize != len(entry):  # (a structured dtype's size)
        raise CorruptSegmentError(
            f"SharedDict entry: an array ({dt}, {shape}) that is not its "
            f"{len(entry) - offset} bytes"
        )
    flat = np.frombuffer(entry, dtype=np.uint8, offset=offset)
    return flat.view(dt).reshape(shape)


_core._set_dict_helpers(_to_plain, _array_from)


class SharedDict(_core.DictCore):
    """A ``MutableMapping[str, bytes | str | int | float | ndarray]`` in a shared heap.

    Get one with ``heap.dict(name)``: every process that has the heap and uses the same name
    sees the same dict. Each operation (``d[k]``, ``d[k] = v``, ``del d[k]``, ``get``, ``pop``,
    ``setdefault``, ``len``, ``clear``, and the snapshots ``list(d)``, ``d.items()``,
    ``d.values()``, ``d.copy()``) is atomic with respect to other processes and threads.
    Sequences of them (``update``, ``d[k] += 1``) are not: each step is.

    Values are copied: ``d["a"] = arr`` stores the array's bytes, ``d["a"]`` returns a new
    writable array. ``timeout`` bounds each wait for the dict's lock (``TimeoutError``;
    default ``None``: wait, Ctrl-C still works). The dict lives as long as the heap;
    ``close()`` only drops this handle.
    """

    # C++ (DictCore): __getitem__, __setitem__, __delitem__, __contains__, __len__, get,
    # setdefault, clear, _pop, _keys, _items.

    @classmethod
    def _open(cls, heap: Heap, name: str, timeout: float | None = None) -> SharedDict:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        self: SharedDict = cls.__new__(cls)
        _core.DictCore.__init__(self, heap, name, timeout)
        return self

    _MISSING: Any = object()

    def pop(self, key: str, default: Any = _MISSING) -> Any:
        """Removes ``key`` and returns its value (atomically); ``default`` (or KeyError) if
        absent."""
        try:
            return self._pop(key)
        except KeyError:
            if default is SharedDict._MISSING:
                raise
            return default

    def popitem(self) -> tuple[str, Value]:
        """Removes and returns some (key, value); KeyError if empty."""
        while True:
            keys = self._keys()
            if not keys:
                raise KeyError("popitem(): SharedDict is empty")
            try:
                return keys[-1], self._pop(keys[-1])
            except KeyError:  # removed meanwhile by someone else: try another
                continue

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def keys(self) -> KeysView[str]:
        return KeysView(self)

    def items(self) -> ItemsView[str, Value]:
        """A view whose iteration is one atomic snapshot of every (key, value)."""
        return _ItemsView(self)

    def values(self) -> ValuesView[Value]:
        """A view whose iteration is one atomic snapshot of every value."""
        return _ValuesView(self)

    def copy(self) -> dict[str, Value]:
        """A plain dict with the contents, read atomically."""
        return dict(self._items())

    update = MutableMapping.update

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        mine = self.copy()
        if mine.keys() != set(other.keys()):
            return False
        for k, v in mine.items():
            o = other[k]
            if isinstance(v, np.ndarray) or isinstance(o, np.ndarray):
                if not (isinstance(v, np.ndarray) and isinstance(o, np.ndarray)):
                    return False
                if v.dtype != o.dtype or not np.array_equal(v, o):
                    return False
            elif v != o:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]

    # --- life cycle ----------------------------------------------------------------------

    def close(self) -> None:
        """Drops this handle (idempotent); the dict and its contents stay in the heap."""
        self._close()

    def __enter__(self) -> SharedDict:
        if self.closed:
            raise ValueError("SharedDict is closed")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return f"<shmipc.SharedDict {self.name!r} closed>"
        return f"<shmipc.SharedDict {self.name!r} len={len(self)}>"

    def __reduce__(self) -> Any:
        if self.closed:
            raise ValueError("SharedDict is closed")
        # The heap travels its own way (by name, or by fd within multiprocessing).
        return (_rebuild, (self.heap, self.name, self.timeout))


def _rebuild(heap: Heap, name: str, timeout: float | None) -> SharedDict:
    return SharedDict._open(heap, name, timeout)


class _ItemsView(ItemsView[str, Value]):
    def __iter__(self) -> Iterator[tuple[str, Value]]:
        return iter(self._mapping._items())  # type: ignore[attr-defined]


class _ValuesView(ValuesView[Value]):
    def __iter__(self) -> Iterator[Value]:
        return iter([v for _, v in self._mapping._items()])  # type: ignore[attr-defined]


MutableMapping.register(SharedDict)
