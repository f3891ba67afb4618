"""A dict shared by every process of a heap (API.md section 6): ``heap.dict(name)``.

The map lives in the heap (``src/ipc_core/shared_dict.hpp``): a hash table of immutable
entries, each published with one store under a robust process-shared lock, so every operation
is atomic with respect to other processes, and a process killed at any moment (SIGKILL
included) neither wedges the others nor leaves a half-written entry. Values are copied in and
out (like ``multiprocessing.Manager().dict()``, without a server process).
"""

from __future__ import annotations

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

# Tags 1..5 are encoded in C++ (bytes, str, int64, float, bool); these are the Python ones.
_TAG_BYTES = 1
_TAG_BIGINT = 16
_TAG_NDARRAY = 17
_heads: dict[tuple[np.dtype[Any], tuple[int, ...]], bytes] = {}  # (dtype, shape) -> entry head


def _encode(value: object) -> tuple[int, bytes, object]:
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError("arrays of Python objects cannot be stored in a SharedDict")
        # The entry: the array's descriptor (the one of every kind, _descriptor), padding, then
        # the C-ordered bytes at the descriptor's offset, 16-byte aligned in the entry and the copy.
        key = (value.dtype, value.shape)
        head = _heads.get(key)
        if head is None:
            n = len(_descriptor.encode(value.dtype, value.shape))
            head = _descriptor.encode(value.dtype, value.shape, n + (-n % 16))
            head += b"\0" * (-len(head) % 16)
            if len(_heads) >= 256:
                _heads.clear()
            _heads[key] = head
        flat = np.ascontiguousarray(value).reshape(-1).view(np.uint8)
        return _TAG_NDARRAY, head, flat
    if isinstance(value, int):  # beyond int64 (smaller ones never get here)
        n = (value.bit_length() + 8) // 8
        return _TAG_BIGINT, value.to_bytes(n, "little", signed=True), None
    if isinstance(value, np.generic) and not value.dtype.hasobject:
        item = value.item()
        if isinstance(item, (bool, int, float)):
            return 0, b"", item  # tag 0: the C++ side stores `item` instead
    if isinstance(value, (bytearray, memoryview)):
        return _TAG_BYTES, bytes(value), None
    raise TypeError(
        "SharedDict values are bytes, str, int, float, bool or numpy.ndarray, "
        f"not {type(value).__name__}"
    )


def _decode(tag: int, blob: bytearray) -> object:
    if tag == _TAG_NDARRAY:
        (dt, shape, off, fortran, nbytes), n = _descriptor.decode_head(blob)
        if off < n or fortran or off + nbytes != len(blob):
            raise CorruptSegmentError(
                f"SharedDict entry: an array descriptor ({dt}, {shape}, offset {off}) that does "
                f"not describe its {len(blob)} bytes"
            )
        flat = np.frombuffer(blob, dtype=np.uint8, offset=off)
        return flat.view(dt).reshape(shape)
    if tag == _TAG_BIGINT:
        return int.from_bytes(blob, "little", signed=True)
    raise ValueError(f"SharedDict entry with an unknown type tag {tag} (newer shmipc?)")


_core._set_dict_helpers(_encode, _decode)


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
