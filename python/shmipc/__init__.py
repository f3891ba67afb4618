"""shmipc: zero-copy, crash-safe shared-memory IPC between processes on one host.

Everything public is importable from here; see docs/ and API.md for the contract.
"""

from __future__ import annotations

from . import _core
from ._buffer import Buffer, recv, recv_array, send, send_array
from ._channel import Channel
from ._dict import SharedDict
from ._errors import ChannelBusyError, CorruptSegmentError, PeerDiedError, ShmipcError
from ._heap import Block, Heap
from ._queue import MessageQueue
from ._stream import chgrp, chmod, open_stream, stream_info
from ._topic import Publisher, Subscriber
from ._value import SharedValue, Subscription

__version__ = "0.1.0"

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
]


def unlink(name: str) -> None:
    """Force-destroys the named shared-memory object (recovery of a stale name).

    Raises FileNotFoundError if no object has that name. Processes that still map it keep
    working on their mapping.
    """
    if not _core.unlink(name):
        raise FileNotFoundError(2, f"no shared-memory object named {_core.normalize_name(name)!r}")


def set_pool_limit(nbytes: int) -> None:
    """Bytes of idle buffer mappings this process keeps for reuse (default 1 GiB; 0 disables)."""
    if nbytes < 0:
        raise ValueError("nbytes must be >= 0")
    _core.set_pool_limit(nbytes)


def pool_stats() -> dict[str, int]:
    """Entries, bytes, limit, hits and misses of this process's buffer pool."""
    return dict(_core.pool_stats())
