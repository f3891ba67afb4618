"""Topics: one publisher, many subscribers, zero copy (API.md section 8).

A topic is a named object of a heap: a ring of the last samples published, one queue cursor per
subscriber, and per-sample reference counts, all in shared memory. ``publish(blk)`` moves a
:class:`~shmipc.Block` into the topic (zero copy: every subscriber receives that very block,
read-only); ``publish(bytes | ndarray | any buffer)`` copies once into the heap. The engine is
``src/ipc_core/topic/``; this module adds the Python conventions (context managers, iteration,
NumPy metadata, multiprocessing pickling).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from . import _core, _descriptor
from ._async import SubscriberAsync
from ._block import Block, _as_bytes_view
from ._errors import PeerDiedError

if TYPE_CHECKING:
    from ._heap import Heap

__all__ = ["Publisher", "Subscriber", "list_topics", "remove"]

_SPIN_TRUE = 0.01


def _check_count(what: str, v: object, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{what} must be an int, not {type(v).__name__}")
    if v < lo:
        raise ValueError(f"{what} must be >= {lo}, got {v}")
    return v


def _spin_seconds(value: float | bool) -> float:
    if isinstance(value, bool):
        return _SPIN_TRUE if value else 0.0
    if not isinstance(value, (int, float)):
        raise TypeError(f"spin must be a number of seconds or a bool, not {type(value).__name__}")
    if not 0 <= value <= 10:
        raise ValueError("spin must be between 0 and 10 seconds")
    return float(value)


class Publisher(_core.PublisherCore):
    """The one publisher of a topic: ``heap.publisher(name, capacity=8, history=0,
    overflow="block", max_subscribers=64)``.

    The topic is created on first use with these settings (an existing topic keeps its own).
    Only one live publisher exists per topic (a second raises
    :class:`~shmipc.ChannelBusyError`). ``close()`` ends the stream: subscribers drain what was
    published, then get ``EOFError``; a publisher that goes away without closing (its process
    killed, the handle dropped) makes them get :class:`~shmipc.PeerDiedError` after the drain.
    """

    @classmethod
    def _open(
        cls,
        heap: Heap,
        name: str,
        capacity: int = 8,
        history: int = 0,
        overflow: str = "block",
        max_subscribers: int = 64,
        max_held: int | None = None,
    ) -> Publisher:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        _check_count("capacity", capacity, 1)
        _check_count("history", history, 0)
        _check_count("max_subscribers", max_subscribers, 1)
        if max_held is not None:
            _check_count("max_held", max_held, 1)
        if overflow not in ("block", "drop_oldest"):
            raise ValueError(f"overflow must be 'block' or 'drop_oldest', got {overflow!r}")
        self = cls.__new__(cls)
        _core.PublisherCore.__init__(
            self, heap, name, capacity, history, overflow, max_subscribers, max_held or 0
        )
        return self

    @property
    def name(self) -> str:
        return str(self._name())

    @property
    def heap(self) -> Heap:
        heap: Heap = self._heap
        return heap

    @property
    def capacity(self) -> int:
        """Samples each subscriber may have pending before the overflow policy applies."""
        return int(self._geometry()[0])

    @property
    def history(self) -> int:
        """Earlier samples a late subscriber gets."""
        return int(self._geometry()[1])

    @property
    def overflow(self) -> str:
        """``"block"`` or ``"drop_oldest"``."""
        return str(self._geometry()[2])

    @property
    def max_subscribers(self) -> int:
        return int(self._geometry()[3])

    @property
    def subscribers(self) -> int:
        """Live subscribers now."""
        return int(self._subscribers())

    @property
    def published(self) -> int:
        """Samples published on the topic so far (by any publisher)."""
        return int(self._published())

    def set_spin(self, value: float | bool) -> None:
        """Seconds a full-queue wait busy-waits before it sleeps (default 50 µs)."""
        self._set_spin(_spin_seconds(value))

    # publish(obj, timeout=None) is PublisherCore.publish (C, METH_FASTCALL: the per-sample
    # hot path); it calls _publish_slow for ndarrays and other buffer types.

    def _publish_slow(self, obj: Any, timeout: float | None) -> None:
        if isinstance(obj, np.ndarray):
            self.publish_array(obj, timeout)
            return
        memoryview(obj)  # the TypeError of an object without the buffer protocol
        self._publish(obj, None, timeout)

    def publish_array(self, arr: Any, timeout: float | None = None) -> None:
        """Publishes an ndarray with its dtype and shape (one copy; non-contiguous arrays are
        published contiguous). Object dtypes raise ``TypeError``."""
        a = np.asarray(arr)
        if a.dtype.hasobject:
            raise TypeError("arrays of Python objects cannot be sent through shared memory")
        fortran = bool(a.flags.f_contiguous and not a.flags.c_contiguous and a.ndim > 1)
        data = a.T if fortran else np.ascontiguousarray(a)
        meta = _descriptor.encode(a.dtype, a.shape, 0, fortran)
        self._publish(_as_bytes_view(data), meta, timeout)

    def ready(self) -> bool:
        """True if ``publish`` would not wait now."""
        return bool(self._ready())

    def close(self) -> None:
        """Ends the stream (idempotent): subscribers drain, then get ``EOFError``."""
        self._close()

    def __enter__(self) -> Publisher:
        if self.closed:
            raise ValueError("Publisher is closed")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return "<shmipc.Publisher closed>"
        return (
            f"<shmipc.Publisher {self.name!r} capacity={self.capacity} history={self.history} "
            f"overflow={self.overflow} subscribers={self.subscribers}>"
        )

    # Travels to multiprocessing children (and through pickle, when its heap can) by name: the
    # child opens the topic's publisher (ChannelBusyError while this one is alive: close it).
    def __reduce__(self) -> Any:
        if self.closed:
            raise ValueError("Publisher is closed")
        capacity, history, overflow, max_subs, max_held = self._geometry()
        return (
            _rebuild_publisher,
            (self._heap, self.name, capacity, history, overflow, max_subs, max_held),
        )


class Subscriber(SubscriberAsync, _core.SubscriberCore):
    """One subscriber of a topic: ``heap.subscriber(name)`` (``FileNotFoundError`` if the topic
    does not exist; a :class:`~shmipc.ShmipcError` naming ``max_subscribers`` when it is full).

    It gets every sample published after it subscribed, plus up to ``history`` earlier ones.
    ``recv`` returns a read-only :class:`~shmipc.Block` that every subscriber shares; its memory
    is freed when the last subscriber that received it releases it (``release()``, a ``with``
    block, or garbage collection) or dies. A subscriber may hold up to ``max_held`` samples at
    once (default ``max(64, capacity + history)``).
    """

    @classmethod
    def _open(cls, heap: Heap, name: str) -> Subscriber:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        self = cls.__new__(cls)
        _core.SubscriberCore.__init__(self, heap, name)
        return self

    @property
    def name(self) -> str:
        return str(self._name())

    @property
    def heap(self) -> Heap:
        heap: Heap = self._heap
        return heap

    @property
    def capacity(self) -> int:
        return int(self._geometry()[0])

    @property
    def history(self) -> int:
        return int(self._geometry()[1])

    @property
    def overflow(self) -> str:
        return str(self._geometry()[2])

    @property
    def missed(self) -> int:
        """Samples this subscriber lost to ``overflow="drop_oldest"``."""
        return int(self._missed())

    def __len__(self) -> int:
        """Samples pending for this subscriber now."""
        return int(self._pending())

    def set_spin(self, value: float | bool) -> None:
        """Seconds a wait busy-waits before it sleeps (default 50 µs)."""
        self._set_spin(_spin_seconds(value))

    # recv(timeout=None) -> Block and recv_bytes(timeout=None) -> bytes are SubscriberCore
    # methods (C, METH_FASTCALL: the per-sample hot paths).

    def recv_array(self, timeout: float | None = None) -> np.ndarray:
        """The next sample as a read-only ndarray view (zero copy); samples published as
        bytes or Blocks arrive as 1-D ``uint8`` arrays. The reference is released when the
        array (and every view of it) is gone."""
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

    def poll(self, timeout: float | None = 0) -> bool:
        """True if ``recv`` would not block (a sample is pending, the stream ended, or the
        publisher died); waits up to ``timeout`` seconds for that."""
        return bool(self._poll(timeout))

    def __iter__(self) -> Iterator[Block]:
        """Yields samples until the publisher closes (a dead publisher still raises
        :class:`~shmipc.PeerDiedError`)."""
        while True:
            try:
                blk = self.recv()
            except PeerDiedError:
                raise
            except EOFError:
                return
            yield blk

    def close(self) -> None:
        """Stops receiving (idempotent). Samples already received stay valid until released."""
        self._close()

    def __enter__(self) -> Subscriber:
        if self.closed:
            raise ValueError("Subscriber is closed")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return "<shmipc.Subscriber closed>"
        return f"<shmipc.Subscriber {self.name!r} pending={len(self)} missed={self.missed}>"

    # Travels by name: the child subscribes anew (from the topic's head, plus history).
    def __reduce__(self) -> Any:
        if self.closed:
            raise ValueError("Subscriber is closed")
        return (_rebuild_subscriber, (self._heap, self.name))


_core._set_topic_publish_fallback(Publisher._publish_slow)


def _rebuild_publisher(
    heap: Heap,
    name: str,
    capacity: int,
    history: int,
    overflow: str,
    max_subscribers: int,
    max_held: int,
) -> Publisher:
    return Publisher._open(heap, name, capacity, history, overflow, max_subscribers, max_held)


def _rebuild_subscriber(heap: Heap, name: str) -> Subscriber:
    return Subscriber._open(heap, name)


def list_topics(heap: Heap) -> dict[str, dict[str, object]]:
    """``{name: {"capacity", "history", "overflow", "subscribers", "publisher_alive", ...}}``."""
    out: dict[str, dict[str, object]] = _core.list_topics(heap)
    return out


def remove(heap: Heap, name: str) -> None:
    """Deletes the channel, topic or shared block ``name`` once none of its endpoints is alive
    (``heap.remove``). ``FileNotFoundError`` if absent; :class:`~shmipc.ChannelBusyError` while
    an endpoint lives."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    kinds = {n: k for (n, k, _off, _nb) in heap._named(0)}
    kind = kinds.get(name)
    if kind is None:
        raise FileNotFoundError(2, f"heap has no object named {name!r}")
    if kind == _core.HEAP_NAMED_TOPIC:
        if not _core.remove_topic(heap, name):
            raise FileNotFoundError(2, f"heap has no object named {name!r}")
        return
    if kind == _core.HEAP_NAMED_CHANNEL:
        if not _core.remove_channel(heap, name):
            raise FileNotFoundError(2, f"heap has no object named {name!r}")
        return
    if not heap._remove_named(name):
        raise FileNotFoundError(2, f"heap has no object named {name!r}")
