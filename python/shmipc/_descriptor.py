"""The one description of an array that travels with array data, for every kind.

Buffers (``send_array``/``recv_array``), channel records, topic samples, SharedValue array
values, SharedDict array entries and the array records of ``send_obj`` all describe their arrays
with the bytes of ``src/ipc_core/base/array_descriptor.hpp`` (version 1: flags, ndim, dtype
length, offset, shape, dtype text), which the public C++ API reads and writes too. The bytes are
made and checked by the engine (``_core.encode_array_descriptor``/``decode_array_descriptor``);
this module maps them to NumPy dtypes and back, and caches both directions: the same kind of
array is usually sent again and again, and a cache hit is one dict lookup.

The dtype text is NumPy's ``dtype.str`` (``"<f4"``, ``"<M8[ns]"``, ``"<U8"``), or for a
structured dtype the JSON of ``numpy.lib.format.dtype_to_descr``. Decoded input is untrusted:
anything malformed, and any dtype NumPy refuses or that holds Python objects, is
:class:`~shmipc.CorruptSegmentError`.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from . import _core
from ._errors import CorruptSegmentError

__all__ = ["Spec", "encode", "decode", "decode_head", "describe", "dtype_of"]

Spec = tuple[np.dtype[Any], tuple[int, ...], int, bool, int]
"""(dtype, shape, offset, fortran, nbytes): what a descriptor says, and the bytes of its array."""

_CACHE_MAX = 256
_encoded: dict[tuple[np.dtype[Any], tuple[int, ...], int, bool], bytes] = {}
_decoded: dict[bytes, Spec] = {}
_lengths: dict[bytes, int] = {}  # header (16 bytes) -> length of the descriptor
_texts: dict[np.dtype[Any], tuple[str, bool]] = {}
_dtypes: dict[tuple[str, bool], np.dtype[Any]] = {}


def encode(
    dtype: np.dtype[Any], shape: tuple[int, ...], offset: int = 0, fortran: bool = False
) -> bytes:
    """The descriptor of an array of ``dtype`` and ``shape`` whose element 0 is ``offset`` bytes
    into its payload, in Fortran order if ``fortran``. TypeError for object dtypes."""
    key = (dtype, shape, offset, fortran)
    raw = _encoded.get(key)
    if raw is None:
        raw = _encode_new(dtype, shape, offset, fortran)
        if len(_encoded) >= _CACHE_MAX:
            _encoded.clear()
        _encoded[key] = raw
    return raw


def describe(dtype: np.dtype[Any]) -> tuple[str, bool]:
    """(the descriptor's dtype text, structured) of ``dtype``; TypeError for object dtypes."""
    out = _texts.get(dtype)
    if out is None:
        if dtype.hasobject:
            raise TypeError(f"arrays of dtype {dtype} hold Python objects; they cannot be shared")
        structured = dtype.fields is not None or dtype.subdtype is not None
        text = json.dumps(np.lib.format.dtype_to_descr(dtype)) if structured else dtype.str
        out = (text, structured)
        if len(_texts) >= _CACHE_MAX:
            _texts.clear()
        _texts[dtype] = out
    return out


def dtype_of(text: str, structured: bool) -> np.dtype[Any]:
    """The dtype a decoded descriptor's dtype text names; CorruptSegmentError if NumPy refuses
    it or it holds Python objects."""
    key = (text, structured)
    dtype = _dtypes.get(key)
    if dtype is None:
        dtype = _dtype(text, structured)
        if len(_dtypes) >= _CACHE_MAX:
            _dtypes.clear()
        _dtypes[key] = dtype
    return dtype


def _encode_new(dtype: np.dtype[Any], shape: tuple[int, ...], offset: int, fortran: bool) -> bytes:
    text, structured = describe(dtype)
    return _core.encode_array_descriptor(
        text, tuple(int(n) for n in shape), int(offset), bool(fortran), structured
    )


def decode(raw: bytes | bytearray | memoryview) -> Spec:
    """What the descriptor ``raw`` (exactly its bytes) says; CorruptSegmentError if malformed."""
    key = raw if type(raw) is bytes else bytes(raw)
    spec = _decoded.get(key)
    if spec is None:
        text, shape, offset, fortran, structured = _core.decode_array_descriptor(key)
        dtype = _dtype(text, structured)
        spec = (dtype, shape, offset, fortran, math.prod(shape) * dtype.itemsize)
        if len(_decoded) >= _CACHE_MAX:
            _decoded.clear()
        _decoded[key] = spec
    return spec


def decode_head(blob: bytes | bytearray | memoryview) -> tuple[Spec, int]:
    """The descriptor at the start of ``blob`` (followed by other bytes) and its length."""
    head = bytes(blob[:16])
    n = _lengths.get(head)
    if n is None:
        n = _core.array_descriptor_length(blob)  # CorruptSegmentError if it does not fit
        if len(_lengths) >= _CACHE_MAX:
            _lengths.clear()
        _lengths[head] = n
    elif len(blob) < n:
        raise CorruptSegmentError(f"bad array descriptor: {len(blob)} bytes for one of {n}")
    return decode(bytes(blob[:n])), n


def _dtype(text: str, structured: bool) -> np.dtype[Any]:
    # The engine checked the syntax of a plain dtype and that a structured one is printable
    # ASCII; whatever NumPy's parsers still raise on it is a corrupt message, not a crash.
    try:
        if structured:
            dtype = np.lib.format.descr_to_dtype(_descr_from_json(json.loads(text)))
        else:
            dtype = np.dtype(text)
    except Exception as e:  # noqa: BLE001 - numpy may raise SyntaxError, TypeError, ...
        raise CorruptSegmentError(f"bad array descriptor: {type(e).__name__}: {e}") from None
    if dtype.hasobject:
        raise CorruptSegmentError("bad array descriptor: a dtype holding Python objects")
    return dtype


def _descr_from_json(descr: Any) -> Any:
    """dtype_to_descr's value back from its JSON: a dtype string, or a list of fields
    ``(name, descr)`` / ``(name, descr, shape)`` whose name may be ``(title, name)``."""
    if isinstance(descr, str):
        return descr
    if not isinstance(descr, list):
        raise TypeError(f"a dtype description is a str or a list, not {type(descr).__name__}")
    fields = []
    for f in descr:
        if not isinstance(f, list) or len(f) not in (2, 3):
            raise TypeError("a field of a dtype description is [name, descr(, shape)]")
        name = tuple(f[0]) if isinstance(f[0], list) else f[0]
        field: tuple[Any, ...] = (name, _descr_from_json(f[1]))
        if len(f) == 3:
            if not isinstance(f[2], list):
                raise TypeError("the shape of a field is a list")
            field += (tuple(f[2]),)
        fields.append(field)
    return fields
