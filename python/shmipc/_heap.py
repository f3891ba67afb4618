"""A shared heap that any attached process allocates from and frees into (API.md section 2).

The allocator lives in C++ (``src/ipc_core/heap/``): its state is inside the shared
segment as offsets, guarded by a robust process-shared lock, with per-thread caches for small
blocks. This module adds the Python conventions: context managers, ``close()``/``closed``,
NumPy views, pickling for multiprocessing.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections.abc import Callable
from multiprocessing import reduction
from typing import Any

from . import _core, _multiprocessing, _topic, _validate
from ._block import Block
from ._channel import Channel, list_channels
from ._dict import SharedDict
from ._topic import Publisher, Subscriber, list_topics

__all__ = ["Heap", "Block"]

_DEFAULT_SIZE = 64 << 20


# Open heaps, closed at interpreter exit (see _close_all_at_exit).
_live: weakref.WeakSet[Any] = weakref.WeakSet()


def _close_all_at_exit() -> None:
    """Closes every open Heap before the interpreter finalizes, as SharedValue does.

    A daemon thread blocked in one of its channels keeps the heap referenced forever, so
    neither close() nor the finalizer would run: the owner's name would stay behind, stale.
    Closing ends such waits (ValueError in that thread) and removes the names of
    non-persistent heaps this process owns. A heap whose Blocks still have views is skipped.
    """
    heaps = list(_live)
    for h in heaps:
        try:
            h.close()
        except Exception:  # noqa: BLE001 -- best effort at exit
            pass
    if heaps and threading.active_count() > 1:
        time.sleep(0.1)  # let threads woken by close() get back to Python


atexit.register(_close_all_at_exit)


class Heap(_core.HeapCore):
    """A shared heap: named (``/dev/shm/NAME``) or anonymous (a memfd).

    Use :meth:`create`, :meth:`attach` or :meth:`anonymous`; then ``heap.allocate(nbytes)``
    returns a :class:`Block`. Every process that has the heap can allocate and free, from any
    thread. Blocks a process still holds when it dies (SIGKILL included) are reclaimed, and a
    process killed inside the allocator does not block the others.

    Closing a heap (or its process exiting) frees the blocks this handle still holds; a heap
    cannot be closed while memoryviews/arrays of its blocks exist (``BufferError``).
    """

    _trust_uid: int  # whom attach() trusted (named heaps travel to children with it)

    # --- construction -----------------------------------------------------------------

    @classmethod
    def create(
        cls,
        name: str,
        size: int = _DEFAULT_SIZE,
        mode: int = 0o600,
        max_size: int | None = None,
        persistent: bool = False,
        *,
        thread_cache: bool = True,
    ) -> Heap:
        """Creates the named heap ``name`` of ``size`` bytes (reserved now: a full /dev/shm
        fails here with MemoryError/OSError, never SIGBUS later).

        ``max_size`` (bytes, total) lets the heap grow by extra segments named ``NAME.1``,
        ``NAME.2``... that other processes map when they first meet them. ``FileExistsError``
        if a live heap of that name exists; a stale one (owner died) is replaced.
        """
        _validate.name(name)
        _validate.integer(size, "size", minimum=1)
        _validate.mode(mode)
        if max_size is not None:
            _validate.integer(max_size, "max_size", minimum=1)
            if max_size < size:
                raise ValueError(f"max_size ({max_size}) must be >= size ({size})")
        self = cls.__new__(cls)
        _core.HeapCore.__init__(self)
        self._open_create(name, _size(size), max_size or 0, mode, bool(persistent), thread_cache)
        _live.add(self)
        return self

    @classmethod
    def attach(
        cls, name: str, *, thread_cache: bool = True, trust_owner: int | str | None = None
    ) -> Heap:
        """Opens the existing named heap ``name`` (``FileNotFoundError`` if there is none,
        ``CorruptSegmentError`` if it is not a valid shmipc heap).

        ``PermissionError`` if another user owns it, unless ``trust_owner`` is that user's uid
        or ``"any"`` (API.md §7): by default only our own user's heaps are trusted.
        """
        _validate.name(name)
        uid = _validate.trust_uid(trust_owner)
        self = cls.__new__(cls)
        _core.HeapCore.__init__(self)
        self._open_attach(name, thread_cache, uid)
        self._trust_uid = uid
        _live.add(self)
        return self

    @classmethod
    def anonymous(cls, size: int = _DEFAULT_SIZE, *, thread_cache: bool = True) -> Heap:
        """A heap in a memfd: no name, gone with its last holder. Share it with
        multiprocessing children as an argument or through a Queue/Pipe (it travels by fd).
        Anonymous heaps do not grow."""
        _check_int("size", size)
        self = cls.__new__(cls)
        _core.HeapCore.__init__(self)
        self._open_anonymous(_size(size), thread_cache)
        _live.add(self)
        return self

    @classmethod
    def _mp_rebuild(cls, fd: int, state: Any) -> Heap:
        self = cls.__new__(cls)
        try:
            _core.HeapCore.__init__(self)
            self._open_fd(fd, True)
        except BaseException:
            os.close(fd)
            raise
        _live.add(self)
        return self

    # --- allocation (``allocate`` itself is implemented in C++ for speed) -------------------

    def shared_block(
        self,
        name: str,
        nbytes: int,
        init: Callable[[Block], object] | None = None,
        *,
        timeout: float | None = 10.0,
    ) -> Block:
        """The one block named ``name`` that every process of this heap shares.

        The first caller creates it (zero-filled) and runs ``init(block)`` exactly once, before
        anyone else gets it; others wait for that (``TimeoutError`` after ``timeout``). If the
        creator dies or ``init`` raises, the next caller creates it anew. ``release()`` of a
        shared block only drops this reference; the block lives as long as the heap.
        """
        self._check_open()
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        _check_int("nbytes", nbytes)
        if nbytes <= 0:
            raise ValueError(f"a shared block needs nbytes >= 1, got {nbytes}")
        return self._shared_block(name, nbytes, init, timeout)

    def channel(self, name: str, capacity: int = 1024) -> Channel:
        """The SPSC channel ``name`` of this heap, created on first use (see Channel)."""
        return Channel._open(self, name, capacity)

    def channels(self) -> dict[str, dict[str, object]]:
        """Every channel of this heap: {name: {"capacity", "queued", "sender_alive",
        "receiver_alive"}}."""
        channels: dict[str, dict[str, object]] = list_channels(self)
        return channels

    def publisher(
        self,
        name: str,
        capacity: int = 8,
        history: int = 0,
        overflow: str = "block",
        max_subscribers: int = 64,
        *,
        max_held: int | None = None,
    ) -> Publisher:
        """The publisher of topic ``name``, created on first use (see Publisher)."""
        self._check_open()
        return Publisher._open(self, name, capacity, history, overflow, max_subscribers, max_held)

    def subscriber(self, name: str) -> Subscriber:
        """A new subscriber of the existing topic ``name`` (see Subscriber)."""
        self._check_open()
        return Subscriber._open(self, name)

    def topics(self) -> dict[str, dict[str, object]]:
        """Every topic of this heap: {name: {"capacity", "history", "overflow", "subscribers",
        "publisher_alive", "max_subscribers", "closed", "published"}}."""
        self._check_open()
        return list_topics(self)

    def remove(self, name: str) -> None:
        """Deletes the channel, topic or shared block ``name`` whose endpoints are all closed
        or dead, with what it still holds. ``FileNotFoundError`` if there is none,
        ChannelBusyError while an endpoint lives."""
        self._check_open()
        _topic.remove(self, name)

    # --- introspection -------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Sizes in bytes: ``size`` (all segments), ``used`` (blocks held, headers included),
        ``free`` (free blocks and per-thread caches), ``largest_free`` (the biggest block one
        allocate could get without growing), ``segments``, ``allocations`` (live blocks), plus
        ``cached`` and ``clients``. Blocks of dead processes are reclaimed first."""
        self._check_open()
        return dict(self._stats())

    @property
    def name(self) -> str | None:
        """The heap's name (None for an anonymous heap)."""
        self._check_open()
        return None if self._anonymous() else str(self._name()).lstrip("/")

    @property
    def max_size(self) -> int:
        self._check_open()
        return int(self._max_size())

    def fileno(self) -> int:
        """The fd of the primary segment."""
        self._check_open()
        return int(self._fileno())

    # --- life cycle ----------------------------------------------------------------------

    def close(self) -> None:
        """Frees the blocks this handle still holds and unmaps the heap (idempotent). The
        creator of a non-persistent named heap also removes its names. ``BufferError`` while
        memoryviews or arrays of its blocks exist."""
        self._close()

    def __enter__(self) -> Heap:
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("Heap is closed")

    def __repr__(self) -> str:
        if self.closed:
            return "<shmipc.Heap closed>"
        return f"<shmipc.Heap {self.name or 'anonymous'} size={self.stats()['size']}>"

    # --- pickling ------------------------------------------------------------------------

    def __reduce_ex__(self, protocol: Any) -> Any:
        self._check_open()
        if self._anonymous():
            raise TypeError(
                "an anonymous shmipc.Heap cannot be pickled outside multiprocessing: it travels "
                "by fd. Pass it to a multiprocessing Process, Queue or Pipe, or use a named heap."
            )
        return (_rebuild_named, (type(self), self.name, getattr(self, "_trust_uid", None)))

    # Last in the class: from here on `dict` in this class body means this method.
    def dict(self, name: str, *, timeout: float | None = None) -> SharedDict:
        """The shared dict ``name`` of this heap, created empty on first use (see SharedDict).
        ``timeout`` bounds every wait of this handle for the dict's lock (``TimeoutError``; a
        holder that is stopped or stuck never hangs it); ``None`` waits (Ctrl-C ends it)."""
        return SharedDict._open(self, name, _validate.timeout(timeout))


def _rebuild_named(cls: Any, name: str, trust_uid: int | None = None) -> Heap:
    # The receiver trusts whom the sender trusted when it attached (its own user by default).
    trust: int | str | None = None
    if trust_uid == _validate.ANY_OWNER:
        trust = "any"
    elif trust_uid is not None and trust_uid != _validate.OWN_USER:
        trust = trust_uid
    heap: Heap = cls.attach(name, trust_owner=trust)
    return heap


def _reduce_for_mp(obj: Heap) -> Any:
    # Named heaps travel by name, anonymous ones by fd (multiprocessing's DupFd).
    obj._check_open()
    if not obj._anonymous():
        return _rebuild_named, (type(obj), obj.name, getattr(obj, "_trust_uid", None))
    return _multiprocessing._rebuild, (type(obj), reduction.DupFd(obj.fileno()), None)


def _register() -> None:
    reduction.register(Heap, _reduce_for_mp)


_register()


def _check_int(what: str, v: object) -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{what} must be an int, not {type(v).__name__}")


def _size(size: int) -> int:
    if size <= 0:
        raise ValueError(f"size must be > 0, got {size}")
    return size
