"""Single-producer/single-consumer channels inside a shared heap (API.md section 2).

A channel is a named ring of small records (block offset, length, kind) in its heap: ``send``
of a :class:`~shmipc.Block` moves the block itself (zero copy), ``send`` of bytes or an ndarray
copies it once into the heap, and the receiver gets a Block (or an ndarray view) of the same
shared memory. The engine is ``src/ipc_core/channel/``; this module adds the Python
conventions (context manager, iteration, NumPy metadata, multiprocessing pickling).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from . import _core, _descriptor
from ._async import ChannelAsync
from ._block import Block, _address, _as_bytes_view, _block_of, _make_readonly, _sole_view
from ._errors import PeerDiedError
from ._objects import channel_recv_obj, channel_send_obj

if TYPE_CHECKING:
    from ._heap import Heap

__all__ = ["Channel", "list_channels"]

_DEFAULT_SPIN = 50e-6  # seconds of busy-waiting before a wait sleeps
_SPIN_TRUE = 0.01  # spin=True: busy-wait up to 10 ms (latency-critical ping-pong)

# Open channels, so that Heap.close() can close the channels of that heap first.
_open: weakref.WeakSet[Channel] = weakref.WeakSet()


class Channel(ChannelAsync, _core.ChannelCore):
    """One end of a named single-producer/single-consumer channel of a :class:`Heap`.

    Get one with ``heap.channel(name, capacity=1024)``; the channel is created on first use
    and keeps the capacity it was created with. A handle becomes the *sender* on its first
    ``send*`` and the *receiver* on its first ``recv*``; at most one live sender and one live
    receiver exist at a time, in any processes (a second one raises
    :class:`~shmipc.ChannelBusyError`). Closing a handle (or its process exiting) frees its
    role; ``close()`` of the sender also ends the stream: the receiver drains what was sent,
    then gets ``EOFError``.

    Blocking calls take ``timeout`` in seconds (``None``: forever, ``0``: do not wait) and raise
    ``TimeoutError`` when it passes. They release the GIL, obey Ctrl-C, and end with
    :class:`~shmipc.PeerDiedError` (an ``EOFError``) within about a second if the process on the
    other side dies.

    ``spin`` (seconds, default 50 µs) is how long a wait busy-waits before it sleeps on a
    futex: while the peer answers within the spin, a hand-off makes no system call at all.
    ``spin=True`` spins up to 10 ms (lowest latency, burns a core while waiting);
    ``spin=False`` or ``0`` sleeps at once (no CPU while idle; every wake-up is a syscall).
    """

    @classmethod
    def _open(
        cls, heap: Heap, name: str, capacity: int = 1024, spin: float | bool | None = None
    ) -> Channel:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        if isinstance(capacity, bool) or not isinstance(capacity, int):
            raise TypeError(f"capacity must be an int, not {type(capacity).__name__}")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self = cls.__new__(cls)
        _core.ChannelCore.__init__(self, heap, name, capacity)
        if spin is not None:
            self.spin = spin
        _open.add(self)
        return self

    # --- attributes ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The channel's name in its heap."""
        return str(self._name())

    @property
    def heap(self) -> Heap:
        """The heap the channel lives in."""
        heap: Heap = self._heap
        return heap

    @property
    def capacity(self) -> int:
        """How many records the channel holds before ``send`` blocks."""
        return int(self._capacity())

    @property
    def role(self) -> str | None:
        """``"sender"``, ``"receiver"`` or ``None`` (no send/recv yet)."""
        role: str | None = self._role()
        return role

    @property
    def spin(self) -> float:
        """Seconds a wait busy-waits before it sleeps (see the class docs)."""
        return float(self._get_spin())

    @spin.setter
    def spin(self, value: float | bool) -> None:
        if isinstance(value, bool):
            value = _SPIN_TRUE if value else 0.0
        if not isinstance(value, (int, float)):
            raise TypeError(
                f"spin must be a number of seconds or a bool, not {type(value).__name__}"
            )
        self._set_spin(float(value))

    def __len__(self) -> int:
        """Records queued now (a snapshot)."""
        return int(self._queued())

    # --- sending ---------------------------------------------------------------------------

    # send(obj, timeout=None) is ChannelCore.send (C, METH_FASTCALL: the per-message hot
    # path); it calls _send_slow for buffers that are not contiguous.

    def _send_slow(self, obj: Any, timeout: float | None) -> None:
        if isinstance(obj, np.ndarray):
            self._send_bytes(np.ascontiguousarray(obj), None, timeout)
            return
        memoryview(obj)  # raises the TypeError of an object without the buffer protocol
        self._send_bytes(bytes(memoryview(obj)), None, timeout)

    def send_array(self, arr: Any, timeout: float | None = None) -> None:
        """Sends an ndarray with its dtype and shape (``recv_array`` rebuilds it).

        Zero copy if ``arr`` is a contiguous view of a Block of this heap and the only view of
        it (e.g. ``blk.as_array(...)`` or a slice of it, with no other array or memoryview of
        ``blk`` alive): the whole block then *moves* to the receiver, ``blk`` is released and
        ``arr`` becomes read-only in the sender (its memory is the receiver's now: do not read
        it either). Otherwise one copy (non-contiguous arrays are sent contiguous). Object
        dtypes raise ``TypeError``.
        """
        a = np.asarray(arr)
        if a.dtype.hasobject:
            raise TypeError("arrays of Python objects cannot be sent through shared memory")
        fortran = bool(a.flags.f_contiguous and not a.flags.c_contiguous and a.ndim > 1)
        blk = _block_of(a)
        # Zero copy: the whole block moves to the receiver. Only when `a` is the sole view of
        # the block (one buffer export, and no other array shares a base of `a`): then no other
        # live array of the sender sees the memory, and `a` becomes read-only.
        if (
            blk is not None
            and blk.heap is self._heap
            and blk._exports == 1
            and (a.flags.c_contiguous or fortran)
            and _sole_view(a)
        ):
            start = _address(a) - blk._address
            if 0 <= start and start + a.nbytes <= blk.nbytes:
                meta = _descriptor.encode(a.dtype, a.shape, start, fortran)
                self._send_block(blk, meta, timeout, True)
                _make_readonly(a)
                return
        if fortran:
            data = a.T  # C-contiguous bytes of the Fortran-ordered array
        else:
            data = np.ascontiguousarray(a)
            fortran = False
        meta = _descriptor.encode(a.dtype, a.shape, 0, fortran)
        self._send_bytes(_as_bytes_view(data), meta, timeout)

    def send_obj(self, obj: Any, timeout: float | None = None) -> None:
        """Sends any picklable object (pickle protocol 5); ``recv_obj`` returns it.

        Buffers of at least 64 KiB inside it (NumPy arrays, bytes, bytearray,
        ``pickle.PickleBuffer``, pandas/pyarrow buffers) travel out of band as blocks of this
        heap: one copy each, none for an array that is the sole view of a Block of this heap
        (that block moves, as with :meth:`send_array`). ``timeout`` bounds the whole call.
        """
        channel_send_obj(self, obj, timeout)

    def recv_obj(self, timeout: float | None = None) -> Any:
        """The next object sent with :meth:`send_obj`. Its arrays view blocks of this heap
        (zero copy), freed when they are garbage-collected; ``bytes``/``bytearray`` arrive as
        their own copies. Raises as :meth:`recv` does."""
        return channel_recv_obj(self, timeout)

    def send_many(self, items: Iterable[Any], timeout: float | None = None) -> int:
        """Copies and sends each buffer of ``items`` in order, as separate records, with far
        less overhead per message than ``send`` (one call, one wake-up per ring-full).

        Blocks while full. Returns how many were sent: all of them, unless the timeout passed
        after some were sent (``TimeoutError`` if none could be).
        """
        seq = items if isinstance(items, (list, tuple)) else list(items)
        return int(self._send_many(seq, timeout))

    # --- receiving -------------------------------------------------------------------------

    def recv(self, timeout: float | None = None) -> Block:
        """The next record as a :class:`~shmipc.Block` owned by this process (release it, or
        let it be garbage-collected). Blocks while the channel is empty.

        Raises ``TimeoutError``; ``EOFError`` once the sender closed and everything was
        received; :class:`~shmipc.PeerDiedError` if the sender died and everything it sent was
        received; :class:`~shmipc.ChannelBusyError` if another receiver is live.
        """
        blk: Block = self._recv_fast(timeout)
        return blk

    def recv_array(self, timeout: float | None = None) -> np.ndarray:
        """The next record as an ndarray view onto its block (zero copy). The block is freed
        when the array (and every view of it) is garbage-collected, from whichever thread.
        Records sent with ``send``/``send_many`` arrive as 1-D ``uint8`` arrays."""
        blk, meta = self._recv_message(timeout)
        if meta is None:
            return blk.as_array(np.uint8)  # type: ignore[no-any-return]
        dtype, shape, start, fortran, need = _descriptor.decode(meta)
        order: Literal["C", "F"] = "F" if fortran else "C"
        if start == 0:
            return blk.as_array(dtype, shape, order)  # type: ignore[no-any-return]
        flat = np.frombuffer(blk, dtype=np.uint8, count=need, offset=start)
        out: np.ndarray = flat.view(dtype).reshape(shape, order=order)
        return out

    # recv_bytes(timeout=None) -> bytes is ChannelCore.recv_bytes (C, METH_FASTCALL).

    def recv_many(self, max: int = 1024, timeout: float | None = None) -> list[bytes]:
        """Up to ``max`` records, each copied into ``bytes``: waits (like ``recv``) for the
        first, then takes what is queued without waiting. The batched counterpart of
        ``send_many``."""
        if isinstance(max, bool) or not isinstance(max, int) or max < 1:
            raise ValueError(f"max must be an int >= 1, got {max!r}")
        out: list[bytes] = self._recv_many(max, timeout)
        return out

    def poll(self, timeout: float | None = 0) -> bool:
        """True if ``recv`` would not block: a record is queued, or the stream ended (recv then
        raises ``EOFError``), or the sender died. Waits up to ``timeout`` seconds for that."""
        return bool(self._poll(timeout))

    def __iter__(self) -> Iterator[Block]:
        """Yields received Blocks until the end of the stream (a dead sender still raises
        :class:`~shmipc.PeerDiedError`)."""
        while True:
            try:
                blk = self.recv()
            except PeerDiedError:
                raise
            except EOFError:
                return
            yield blk

    # --- life cycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Closes this handle (idempotent). If it is the sender, the stream ends: the receiver
        drains what is queued, then gets ``EOFError``. Closing a receiver only frees the role
        for another receiver."""
        _open.discard(self)
        self._close()

    def release(self) -> None:
        """Gives up this handle's role (sender or receiver) without ending the stream, so that
        another handle, in any process, can take it. The handle stays usable."""
        self._release()

    def __enter__(self) -> Channel:
        if self.closed:
            raise ValueError("Channel is closed")
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None and not self.closed:
            # An exception inside `with`: the stream did not end well. The receiver drains what
            # was sent, then gets PeerDiedError (not a clean EOFError).
            _open.discard(self)
            self._abort()
            return
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return "<shmipc.Channel closed>"
        return (
            f"<shmipc.Channel {self.name!r} capacity={self.capacity} queued={len(self)} "
            f"role={self.role}>"
        )

    # Travels to multiprocessing children (and through pickle, when its heap can) as
    # (heap, name): the child opens its own handle, with no role yet.
    def __reduce__(self) -> Any:
        if self.closed:
            raise ValueError("Channel is closed")
        return (_rebuild, (self._heap, self.name, self.capacity, self.spin))


_core._set_channel_send_fallback(Channel._send_slow)


def _rebuild(heap: Heap, name: str, capacity: int, spin: float) -> Channel:
    return Channel._open(heap, name, capacity, spin)


def list_channels(heap: Heap) -> dict[str, dict[str, object]]:
    """``{name: {"capacity", "queued", "sender_alive", "receiver_alive"}}`` for every
    channel of ``heap`` (``heap.channels()``)."""
    out: dict[str, dict[str, object]] = _core.list_channels(heap)
    return out


def _close_channels_of(heap: Heap) -> None:
    """Closes every open channel of ``heap`` (called by Heap.close() before it unmaps)."""
    for ch in list(_open):
        if ch._heap is heap:
            ch.close()
