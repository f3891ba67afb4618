"""Multi-producer multi-consumer message queues in named shared memory (API.md section 5)."""

from __future__ import annotations

import atexit
import pickle
import queue
import threading
import time
import weakref
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import _core, _objects, _validate
from ._async import QueueAsync
from ._heap import Heap

if TYPE_CHECKING:
    from ._heap import Heap

__all__ = ["MessageQueue"]

_dumps = pickle.dumps
_loads = pickle.loads
_PROTOCOL = 5
_TIMED_OUT = _core.TIMED_OUT


def _closed() -> ValueError:
    return ValueError("MessageQueue is closed")


class MessageQueue(QueueAsync):
    """A bounded queue of messages shared by any number of producer and consumer processes.

    Messages are Python objects (pickled with protocol 5, like ``multiprocessing.Queue``) or raw
    bytes (``put_bytes``/``get_bytes``), each at most ``max_message_size`` bytes. It lives in
    ``/dev/shm/<name>``; other processes open it with :meth:`attach` (or receive it as an
    argument: it travels by name).

    Crash safety: a producer or consumer killed at any moment (SIGKILL included) never blocks
    the others, and no committed message is lost or duplicated. A message a producer was still
    writing when it died is discarded; a message a consumer had claimed but not yet returned
    goes to another consumer.

    Blocking calls release the GIL, obey Ctrl-C, and raise ``queue.Full``/``queue.Empty`` on
    timeout, as ``queue.Queue`` does.
    """

    __slots__ = ("_q", "_name", "_trust", "_oob", "__weakref__")

    def __init__(self, _handle: _core.MessageQueue, _oob: Any = None) -> None:
        self._q: _core.MessageQueue | None = _handle
        self._name: str = _handle.name
        self._trust: int | str | None = None
        _live.add(self)
        # The companion heap of out-of-band buffers (shmipc/_objects.py): a Heap, None (not
        # looked up yet) or False (this queue has none).
        self._oob: Any = _oob

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        name: str,
        maxsize: int = 1024,
        max_message_size: int = 1 << 16,
        mode: int = 0o600,
        persistent: bool = False,
        *,
        oob_size: int = 4 << 20,
        oob_max_size: int = 1 << 40,
    ) -> MessageQueue:
        """Creates the queue ``name`` with room for ``maxsize`` messages of at most
        ``max_message_size`` bytes each.

        Buffers of at least 64 KiB inside objects given to :meth:`put` (NumPy arrays, pandas and
        pyarrow buffers, large bytes) travel out of band, through the companion heap
        ``NAME.oob`` created here with ``oob_size`` bytes; it grows by segments up to
        ``oob_max_size`` bytes as needed (``MemoryError`` beyond, or when /dev/shm is full).
        ``oob_size=0``: no companion heap, everything travels in band.

        Reserves ``maxsize * round_up(max_message_size + 16, 64)`` bytes of shared memory now
        (``MemoryError`` if ``/dev/shm`` cannot hold them). ``FileExistsError`` if a live queue
        (or other object) has that name; a stale one whose owner died is replaced. With
        ``persistent=False`` the name is removed when this handle is closed or its process
        exits; with ``persistent=True`` it stays until ``shmipc.unlink(name)``.
        """
        _validate.name(name)
        _validate.integer(maxsize, "maxsize", minimum=1)
        _validate.integer(max_message_size, "max_message_size", minimum=1)
        _validate.mode(mode)
        for arg, value in (("oob_size", oob_size), ("oob_max_size", oob_max_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{arg} must be an int >= 0, got {value!r}")
        h = _core.MessageQueue.create(name, maxsize, max_message_size, mode, bool(persistent))
        oob: Any = False
        if oob_size > 0 and len(_oob_name(h.name)) <= 196:  # room for extension suffixes
            try:
                oob = Heap.create(
                    _oob_name(h.name),
                    size=oob_size,
                    mode=mode,
                    max_size=max(oob_size, oob_max_size),
                    persistent=bool(persistent),
                )
            except BaseException:
                h.close()
                raise
        return cls(h, oob)

    @classmethod
    def attach(cls, name: str, *, trust_owner: int | str | None = None) -> MessageQueue:
        """Opens the existing queue ``name`` (``FileNotFoundError`` if there is none,
        ``CorruptSegmentError`` if the name is not a valid shmipc queue).

        ``PermissionError`` if another user owns it, unless ``trust_owner`` is that user's uid
        or ``"any"`` (API.md §7): ``get()`` unpickles what the queue holds, so by default only a
        queue of our own user is opened — never one another user planted under the name.
        """
        _validate.name(name)
        self = cls(_core.MessageQueue.attach(name, _validate.trust_uid(trust_owner)))
        self._trust = trust_owner
        return self

    # ---- objects ---------------------------------------------------------------------------
    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        """Puts a pickled ``obj``; waits for room if ``block`` (at most ``timeout`` seconds).

        ``queue.Full`` if there is no room in time, ``ValueError`` if the pickle is larger
        than ``max_message_size``.
        """
        q = self._q
        if q is None:
            raise _closed()
        # One call for the common case: an object with no buffers (atoms, flat containers of
        # them) is pickled and put by the core; None means it may hold large buffers.
        done = q.put_object(obj, block, timeout)
        if done is None:
            self._put_obj(q, obj, block, timeout)
        elif not done:  # no room in time: queue.Queue's convention
            raise queue.Full from None

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Removes and returns the next object; waits if ``block`` (at most ``timeout``
        seconds), else ``queue.Empty``."""
        q = self._q
        if q is None:
            raise _closed()
        # One call: the core gets the message and unpickles it (or hands a message with
        # out-of-band buffers to _decode_oob).
        obj = q.get_object(block, timeout, self._decode_oob)
        if obj is _TIMED_OUT:  # nothing in time: queue.Queue's convention
            raise queue.Empty from None
        return obj

    def put_nowait(self, obj: Any) -> None:
        """``put(obj, block=False)``."""
        self.put(obj, False, None)

    def get_nowait(self) -> Any:
        """``get(block=False)``."""
        return self.get(False, None)

    # ---- out-of-band buffers (shmipc/_objects.py) -------------------------------------------
    def _put_obj(self, q: _core.MessageQueue, obj: Any, block: bool, timeout: float | None) -> None:
        msg, heap, refs = self._encode(q, obj)
        try:
            q.put_bytes(msg, block, timeout)
        except BaseException as e:
            if refs:
                _objects.drop_refs(heap, refs)
            if isinstance(e, TimeoutError):
                raise queue.Full from None
            raise

    def _encode(self, q: _core.MessageQueue, obj: Any) -> tuple[bytes, Any, Any]:
        """The message for ``obj`` (buffers >= 64 KiB out of band in the companion heap), the
        heap and the references to drop if the message is never put."""
        data, buffers = _objects.dumps(obj)
        if not buffers:
            return data, None, None
        heap = self._oob_heap()
        if heap is None:  # a queue without a companion heap: everything in band
            return _dumps(obj, _PROTOCOL), None, None
        if _objects.queue_header_size(len(buffers)) + len(data) > q.max_message_size:
            raise ValueError(
                f"the in-band part of this object is {len(data)} bytes (+ 24 per out-of-band "
                f"buffer); the queue's max_message_size is {q.max_message_size}"
            )
        msg, refs = _objects.encode_queue_message(heap, data, buffers)
        return msg, heap, refs

    def _decode(self, raw: bytes) -> Any:
        if raw[:1] == b"\x00":  # out-of-band buffers (a plain pickle starts with PROTO, 0x80)
            return self._decode_oob(raw)
        return _loads(raw)

    def _decode_oob(self, raw: bytes) -> Any:
        return _objects.decode_queue_message(raw, self._oob_heap)

    def _oob_heap(self) -> Any:
        oob = self._oob
        if oob is None:
            try:
                oob = Heap.attach(_oob_name(self._name), trust_owner=self._trust)
            except FileNotFoundError:
                oob = False
            self._oob = oob
        return oob or None

    # ---- raw bytes -------------------------------------------------------------------------
    def put_bytes(self, data: Any, block: bool = True, timeout: float | None = None) -> None:
        """Puts the bytes of any buffer-protocol object (one copy, no pickle)."""
        q = self._q
        if q is None:
            raise _closed()
        try:
            q.put_bytes(data, block, timeout)
        except TimeoutError:
            raise queue.Full from None

    def get_bytes(self, block: bool = True, timeout: float | None = None) -> bytes:
        """Removes and returns the next message as ``bytes``."""
        q = self._q
        if q is None:
            raise _closed()
        try:
            result: bytes = q.get_bytes(block, timeout)
        except TimeoutError:
            raise queue.Empty from None
        return result

    def put_many_bytes(self, items: Any, block: bool = True, timeout: float | None = None) -> None:
        """Puts each item of ``items`` in order (each one may wait, with the same timeout)."""
        h = self._handle()
        try:
            for data in items:
                h.put_bytes(data, block, timeout)
        except TimeoutError:
            raise queue.Full from None

    def get_many_bytes(
        self, max_messages: int, block: bool = True, timeout: float | None = None
    ) -> list[bytes]:
        """Returns 1..``max_messages`` messages: waits (per ``block``/``timeout``) for the
        first, then takes whatever else is there without waiting."""
        if max_messages < 1:
            raise ValueError(f"max_messages must be >= 1, got {max_messages}")
        h = self._handle()
        try:
            out = [h.get_bytes(block, timeout)]
        except TimeoutError:
            raise queue.Empty from None
        try:
            while len(out) < max_messages:
                out.append(h.get_bytes(False, None))
        except TimeoutError:  # nothing more queued
            pass
        return out

    # ---- state -----------------------------------------------------------------------------
    def qsize(self) -> int:
        """Messages in the queue now (approximate while others put and get)."""
        n: int = self._handle().qsize()
        return n

    def empty(self) -> bool:
        """``qsize() == 0`` (approximate, as for ``queue.Queue``)."""
        return self.qsize() == 0

    def full(self) -> bool:
        """``qsize() >= maxsize`` (approximate, as for ``queue.Queue``)."""
        h = self._handle()
        return bool(h.qsize() >= h.maxsize)

    @property
    def maxsize(self) -> int:
        """Capacity in messages."""
        n: int = self._handle().maxsize
        return n

    @property
    def max_message_size(self) -> int:
        """Largest message in bytes (for ``put``, the size of the pickle)."""
        n: int = self._handle().max_message_size
        return n

    @property
    def name(self) -> str:
        """The shared-memory name, with its leading ``/``."""
        return self._name

    # ---- lifetime --------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._q is None

    def close(self) -> None:
        """Detaches (idempotent). The creator of a non-persistent queue also removes its name;
        other processes keep working on their mapping. A get() or put() waiting in another
        thread of this handle ends with ``ValueError`` (closed); nothing it had is lost."""
        q, self._q = self._q, None
        oob, self._oob = self._oob, False
        if oob:
            try:
                oob.close()
            except BufferError:
                pass  # received arrays still view it: it closes when they are gone
        if q is not None:
            q.close()

    def __enter__(self) -> MessageQueue:
        self._handle()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Travels by name (multiprocessing with any start method, plain pickle too); the
        # receiver trusts whom this handle trusted.
        self._handle()
        return (_attach, (type(self), self._name, self._trust))

    def __repr__(self) -> str:
        if self._q is None:
            return f"<shmipc.MessageQueue {self._name!r} closed>"
        return (
            f"<shmipc.MessageQueue {self._name!r} qsize={self._q.qsize()} "
            f"maxsize={self._q.maxsize} max_message_size={self._q.max_message_size}>"
        )

    @property
    def oob_heap(self) -> Heap | None:
        """The companion :class:`~shmipc.Heap` that holds out-of-band buffers (None if the
        queue has none). Arrays produced in its blocks travel with no copy at all::

            a = q.oob_heap.allocate(64 << 20).as_array(np.float64)
            a[:] = ...            # produce in place
            q.put({"a": a})       # the block moves to the consumer; `a` becomes read-only

        (an array that is the sole view of one of its Blocks moves; any other is copied once).
        """
        self._handle()
        heap: Heap | None = self._oob_heap()
        return heap

    @property
    def oob_stats(self) -> dict[str, int] | None:
        """``Heap.stats()`` of the companion heap that holds out-of-band buffers (None if the
        queue has none)."""
        self._handle()
        heap = self._oob_heap()
        return None if heap is None else heap.stats()

    def _handle(self) -> _core.MessageQueue:
        q = self._q
        if q is None:
            raise _closed()
        return q


def _attach(cls: Any, name: str, trust_owner: int | str | None) -> MessageQueue:
    q: MessageQueue = cls.attach(name, trust_owner=trust_owner)
    return q


# Open queues, closed at interpreter exit: a daemon thread blocked in get() keeps its queue
# referenced, so the owner's name would otherwise stay behind (see _heap._close_all_at_exit).
_live: weakref.WeakSet[MessageQueue] = weakref.WeakSet()


def _close_all_at_exit() -> None:
    queues = list(_live)
    for q in queues:
        try:
            q.close()
        except Exception:  # noqa: BLE001 -- best effort at exit
            pass
    if queues and threading.active_count() > 1:
        time.sleep(0.1)


atexit.register(_close_all_at_exit)


def _oob_name(queue_name: str) -> str:
    return queue_name.lstrip("/") + ".oob"
