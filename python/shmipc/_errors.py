"""The exception hierarchy of shmipc (API.md section 0)."""

from __future__ import annotations

__all__ = ["ShmipcError", "CorruptSegmentError", "PeerDiedError", "ChannelBusyError"]


class ShmipcError(Exception):
    """Base class of the package's own errors. OS failures are plain ``OSError`` subclasses."""


class CorruptSegmentError(ShmipcError, ValueError):
    """A segment, fd or message is not what it claims to be (wrong magic, version, size, seals)."""


class PeerDiedError(ShmipcError, EOFError):
    """The process on the other side of a wait died (killed or crashed)."""


class ChannelBusyError(ShmipcError):
    """A second live sender (or receiver) tried to claim a single-producer/consumer endpoint."""
