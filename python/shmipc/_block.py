"""Blocks of a shared heap and the NumPy helpers of arrays that view them.

:class:`Block` is a C type (``_core.Block``, for speed; its docstring documents it). This module
holds what every kind that moves blocks needs of it: ``Block.as_array`` (registered with the
extension), finding the Block behind an array, deciding whether an array is the sole view of
its block (then the block itself can move, zero copy), making a moved array read-only, and the
flat byte view of an array that is copied into a block.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from . import _core
from ._buffer import array_spec

__all__ = ["Block"]

Block = _core.Block


def _block_as_array(
    blk: Any, dtype: Any = np.uint8, shape: Any = None, order: str = "C"
) -> np.ndarray:
    if blk.released:
        raise ValueError("Block is released")
    dt, shape = array_spec(blk.nbytes, dtype, shape, order, "block")
    need = math.prod(shape) * dt.itemsize
    flat = np.frombuffer(blk, dtype=np.uint8, count=need)
    return flat.view(dt).reshape(shape, order="F" if order == "F" else "C")


_core._set_block_helpers(_block_as_array)


def _block_of(a: np.ndarray) -> Any:
    """The live Block whose memory ``a`` views, or None."""
    base: Any = a
    for _ in range(64):  # bounded: base chains are short
        if isinstance(base, Block):
            return None if base.released else base
        if isinstance(base, memoryview):
            base = base.obj
        elif isinstance(base, np.ndarray):
            base = base.base
        else:
            return None
    return None


def _address(a: np.ndarray) -> int:
    return int(a.__array_interface__["data"][0])


def _sole_view(a: np.ndarray) -> bool:
    """True if no array other than `a` (and the chain of bases it holds) views its memory:
    every base array of `a` is referenced only by its child's ``.base``."""
    child: Any = a
    for _ in range(64):
        parent = child.obj if isinstance(child, memoryview) else child.base
        if isinstance(parent, Block):
            return True
        if not isinstance(parent, (np.ndarray, memoryview)):
            return False
        # References: the child's .base, the local `parent`, getrefcount's argument.
        if sys.getrefcount(parent) > 3:
            return False
        child = parent
    return False


def _make_readonly(a: np.ndarray) -> None:
    """Clears the writeable flag of `a` and of every ndarray it views."""
    base: Any = a
    for _ in range(64):
        if not isinstance(base, np.ndarray):
            return
        base.flags.writeable = False
        base = base.base


def _as_bytes_view(a: np.ndarray) -> Any:
    """A flat byte view of a C-contiguous array (works for every dtype, 0-d included)."""
    return a.reshape(-1).view(np.uint8) if a.size else b""
