"""shmipc: zero-copy, crash-safe shared-memory IPC between processes on one host.

Everything public is importable from here; see docs/ and API.md for the contract.
"""

from __future__ import annotations

from . import _core
from ._async import arecv, arecv_array, reactor_info
from ._buffer import Buffer, recv, recv_array, send, send_array
from ._channel import Channel
from ._cpp import get_cmake_dir, get_include
from ._dict import SharedDict
from ._errors import ChannelBusyError, CorruptSegmentError, PeerDiedError, ShmipcError
from ._heap import Block, Heap
from ._ndarray import asarray, empty, full, full_like, ndarray, zeros, zeros_like
from ._queue import MessageQueue
from ._stream import chgrp, chmod, open_stream, stream_info
from ._topic import Publisher, Subscriber
from ._value import SharedValue, Subscription
from ._wait import wait

try:  # the version is written once, in pyproject.toml
    from importlib.metadata import version as _dist_version

    __version__ = _dist_version("shmipc")
except Exception:  # noqa: BLE001 -- running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "Buffer",
    "Heap",
    "Block",
    "SharedDict",
    "Channel",
    "Publisher",
    "Subscriber",
    "send",
    "recv",
    "send_array",
    "recv_array",
    "MessageQueue",
    "unlink",
    "ShmipcError",
    "CorruptSegmentError",
    "PeerDiedError",
    "ChannelBusyError",
    "set_pool_limit",
    "pool_stats",
    "open_stream",
    "chmod",
    "chgrp",
    "stream_info",
    "SharedValue",
    "Subscription",
    "ndarray",
    "zeros",
    "empty",
    "full",
    "asarray",
    "zeros_like",
    "full_like",
    "wait",
    "arecv",
    "arecv_array",
    "reactor_info",
    "get_include",
    "get_cmake_dir",
]


def unlink(name: str) -> None:
    """Force-destroys the named shared-memory object (recovery of a stale name).

    Raises FileNotFoundError if no object has that name. Processes that still map it keep
    working on their mapping.
    """
    if not _core.unlink(name):
        raise FileNotFoundError(2, f"no shared-memory object named {_core.normalize_name(name)!r}")
    # A MessageQueue's companion heap of out-of-band buffers (NAME.oob, NAME.oob.1, ...).
    oob = _core.normalize_name(name) + ".oob"
    if len(oob) <= 197 and _core.unlink(oob):
        for i in range(1, 64):
            _core.unlink(f"{oob}.{i}")


def set_pool_limit(nbytes: int) -> None:
    """Bytes of idle buffer mappings this process keeps for reuse (default 1 GiB; 0 disables)."""
    if nbytes < 0:
        raise ValueError("nbytes must be >= 0")
    _core.set_pool_limit(nbytes)


def pool_stats() -> dict[str, int]:
    """Entries, bytes, limit, hits and misses of this process's buffer pool."""
    return dict(_core.pool_stats())
