"""Shared values with change notification (API.md section 4).

A :class:`SharedValue` is the latest value of something -- a ``str``, ``bytes`` or a NumPy array
of any dtype and shape -- published under a name, with a version that increases on every write
and a futex that wakes readers waiting for a change. Readers always get a consistent copy: the
engine keeps two slots, so a writer killed mid-write leaves the previous value readable, and a
robust writer lock means the next writer proceeds.
"""

from __future__ import annotations

import atexit
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any, Union

import numpy as np

from . import _core, _descriptor, _validate
from ._async import ValueAsync
from ._errors import CorruptSegmentError

__all__ = ["SharedValue", "Subscription", "Value"]

Value = Union[str, bytes, "np.ndarray[Any, Any]"]

# Type tags stored with each value (kept in sync with bind_value.cpp: 3 reads as a bytearray).
_BYTES = 1
_TEXT = 2
_ARRAY = 3


# A value is usually written and read as the same kind of array again and again: both directions
# keep what _descriptor said, checked once, so that a hit is one dict lookup (a value write of a
# small array costs ~2 us in all; the generic codec's checks per call were 0.3 us of it).
_CACHE_MAX = 256
_meta_of: dict[tuple[np.dtype[Any], tuple[int, ...]], bytes] = {}
_array_of: dict[bytes, tuple[np.dtype[Any], tuple[int, ...], int]] = {}


def _array_meta(arr: np.ndarray[Any, Any]) -> bytes:
    """The descriptor of a C-ordered copy of ``arr`` (the one of every kind, _descriptor)."""
    key = (arr.dtype, arr.shape)
    meta = _meta_of.get(key)
    if meta is None:
        if arr.dtype.hasobject:
            raise TypeError(f"cannot share an array of dtype {arr.dtype} (it holds Python objects)")
        meta = _descriptor.encode(arr.dtype, arr.shape)
        if len(_meta_of) >= _CACHE_MAX:
            _meta_of.clear()
        _meta_of[key] = meta
    return meta


def _decode_array(meta: bytes, payload: bytearray) -> np.ndarray[Any, Any]:
    spec = _array_of.get(meta)
    if spec is None:
        dtype, shape, offset, fortran, nbytes = _descriptor.decode(meta)
        if offset != 0 or fortran:
            raise CorruptSegmentError(
                f"a shared value's array descriptor ({dtype}, {shape}, offset {offset}, "
                f"fortran={fortran}) is not one of a C-ordered array at offset 0"
            )
        spec = (dtype, shape, nbytes)
        if len(_array_of) >= _CACHE_MAX:
            _array_of.clear()
        _array_of[meta] = spec
    dtype, shape, nbytes = spec
    if nbytes != len(payload):
        raise CorruptSegmentError(
            f"a shared value's array descriptor ({dtype}, {shape}: {nbytes} bytes) does not "
            f"describe its {len(payload)} bytes"
        )
    return np.ndarray(shape, dtype, payload)


class Subscription:
    """A running :meth:`SharedValue.on_change` delivery; ``stop()`` (or ``with``) ends it."""

    def __init__(
        self,
        value: SharedValue,
        callback: Callable[[Any], object],
        on_error: Callable[[BaseException], object] | None,
    ) -> None:
        self._value = value
        self._callback = callback
        self._on_error = on_error
        self._stop = threading.Event()
        self._since = value._seen  # changes after on_change() was called are delivered
        self._handle = value._h()  # its own reference: close() stops us via the handle
        self._thread = threading.Thread(
            target=self._run, name=f"shmipc-on-change-{value._name}", daemon=True
        )

    def _start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        seen = self._since
        handle = self._handle
        while not self._stop.is_set():
            try:
                # Short slices so stop() is noticed promptly; a write wakes us at once (futex).
                if not handle.wait(seen, 0.1):
                    continue
                version, tag, meta, payload = handle.read()
            except ValueError:  # the SharedValue was closed under us
                return
            if version <= seen or self._stop.is_set():
                continue
            seen = version
            try:
                self._callback(_decode(tag, meta, payload))
            except BaseException as e:  # noqa: BLE001 -- a callback must not kill delivery
                if self._on_error is not None:
                    self._on_error(e)
                else:
                    traceback.print_exception(type(e), e, e.__traceback__)

    @property
    def running(self) -> bool:
        """True until stop() (or the SharedValue's close()) ended the delivery thread."""
        return self._thread.is_alive()

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stops delivery and joins the thread (not when called from the callback itself)."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _decode(tag: int, meta: bytes, payload: Any) -> Value | None:
    if tag == _BYTES:
        return payload  # type: ignore[no-any-return]
    if tag == _TEXT:
        return payload.decode("utf-8")  # type: ignore[no-any-return]
    if tag == _ARRAY:
        return _decode_array(meta, payload)
    if tag == 0:
        return None
    raise CorruptSegmentError(f"unknown value type tag {tag}")


# Open values, closed at interpreter exit (see _close_all_at_exit).
_live: weakref.WeakSet[SharedValue] = weakref.WeakSet()


def _close_all_at_exit() -> None:
    """Closes every open SharedValue before the interpreter finalizes.

    This stops on_change threads and ends waits of other daemon threads (they get ValueError):
    a thread still inside the engine with the GIL released when finalization starts would be
    torn down by CPython while unwinding C++ frames, which aborts the process. It also removes
    the names of non-persistent values this process owns, as its close() would.
    """
    values = list(_live)
    for v in values:
        try:
            v.close()
        except Exception:  # noqa: BLE001 -- best effort at exit
            pass
    if values and threading.active_count() > 1:
        time.sleep(0.1)  # let other threads woken by close() get back to Python


atexit.register(_close_all_at_exit)


class SharedValue(ValueAsync):
    """The latest value of something, shared by name, with change notification.

    >>> w = SharedValue.create("jsonPipe", size=65535)          # doctest: +SKIP
    >>> w.write("text"); r = SharedValue.attach("jsonPipe")     # doctest: +SKIP
    >>> r.read(), r.version                                     # doctest: +SKIP
    ('text', 1)

    ``size`` is the largest value in bytes (``len`` of bytes, UTF-8 bytes of a str,
    ``arr.nbytes``); a larger write is a ``ValueError`` and changes nothing. Values are copied
    in on ``write`` and out on ``read``: ``read`` returns a private, consistent copy.
    """

    __slots__ = ("_handle", "_name", "_seen", "_subs", "_lock", "_trust", "__weakref__")

    def __init__(self, handle: Any) -> None:
        # Use create() or attach().
        self._handle = handle
        self._name: str = handle.name
        self._seen: int = handle.version
        self._subs: list[Subscription] = []
        self._lock = threading.Lock()
        self._trust: int | str | None = None
        _live.add(self)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def create(
        cls, name: str, size: int = 65536, *, mode: int = 0o600, persistent: bool = False
    ) -> SharedValue:
        """Creates the named value, empty (``read()`` returns None, version 0).

        ``FileExistsError`` if a live one exists; one whose non-persistent owner died is
        replaced. The owner's ``close()`` (or its exit, crash included) removes the name unless
        ``persistent=True`` (then ``shmipc.unlink(name)`` does). ``mode`` is exact permission
        bits, whatever the umask.
        """
        _validate.name(name)
        _validate.integer(size, "size", minimum=1)
        _validate.mode(mode)
        return cls(_core.SharedValue.create(name, size, mode, bool(persistent)))

    @classmethod
    def attach(cls, name: str, *, trust_owner: int | str | None = None) -> SharedValue:
        """Opens an existing value: ``FileNotFoundError`` if absent, ``CorruptSegmentError`` if
        the name is not a SharedValue (or is truncated). Read-only if the permission bits grant
        only read (then ``write`` raises ``PermissionError``).

        ``PermissionError`` if another user owns it, unless ``trust_owner`` is that user's uid
        or ``"any"`` (API.md §7).
        """
        _validate.name(name)
        self = cls(_core.SharedValue.attach(name, _validate.trust_uid(trust_owner)))
        self._trust = trust_owner
        return self

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Named objects travel by name: the receiver attaches (and is not the owner), trusting
        # whom this handle trusted.
        self._h()
        return (_attach, (type(self), self._name, self._trust))

    # -- state --------------------------------------------------------------------------------

    def _h(self) -> Any:
        h = self._handle
        if h is None:
            raise ValueError("SharedValue is closed")
        return h

    @property
    def name(self) -> str:
        """The normalized name ("/jsonPipe")."""
        return self._name

    @property
    def size(self) -> int:
        """Capacity in bytes: the largest value that fits."""
        return int(self._h().capacity)

    @property
    def owner(self) -> bool:
        """True in the process that created it (its close removes a non-persistent name)."""
        return bool(self._h().owner)

    @property
    def persistent(self) -> bool:
        return bool(self._h().persistent)

    @property
    def readonly(self) -> bool:
        """True if attached without write permission."""
        return not self._h().writable

    @property
    def version(self) -> int:
        """Number of writes so far (0 = never written). Increases on every write, never resets."""
        return int(self._h().version)

    @property
    def writer_deaths(self) -> int:
        """How many times a writer died holding the writer lock and was recovered from."""
        return int(self._h().writer_deaths)

    @property
    def closed(self) -> bool:
        return self._handle is None

    # -- values -------------------------------------------------------------------------------

    def write(self, value: Value) -> int:
        """Replaces the value with a copy of ``value`` (str, bytes-like, ndarray, or a NumPy
        scalar, which reads back as a 0-d array) and returns the version of this write
        (another writer may already have moved on).

        Arrays keep dtype and shape (any dtype but object; non-contiguous arrays are copied
        contiguous). ``ValueError`` if it does not fit ``size`` (the old value stays). Wakes
        every waiting reader.
        """
        h = self._handle
        if h is None:
            raise ValueError("SharedValue is closed")
        t = type(value)
        version: int
        if t is bytes:  # fast paths for the exact common types
            version = h.write(_BYTES, b"", value)
        elif t is str:
            version = h.write(_TEXT, b"", value.encode("utf-8"))  # type: ignore[union-attr]
        else:
            version = self._write_other(h, value)
        if version > self._seen:
            self._seen = version  # our own write counts as seen: wait() waits for the next one
        return version

    @staticmethod
    def _write_other(h: Any, value: Any) -> int:
        if isinstance(value, np.generic):
            value = np.asarray(value)  # a NumPy scalar travels as a 0-d array
        if isinstance(value, np.ndarray):
            meta = _array_meta(value)
            if not value.flags.c_contiguous:
                value = np.ascontiguousarray(value)
            try:
                return int(h.write(_ARRAY, meta, value))
            except (ValueError, BufferError):
                if value.nbytes > h.capacity:
                    raise
                # dtypes the buffer protocol cannot express (datetime64...): as raw bytes
                return int(h.write(_ARRAY, meta, value.reshape(-1).view(np.uint8)))
        if isinstance(value, str):
            return int(h.write(_TEXT, b"", value.encode("utf-8")))
        if isinstance(value, (bytes, bytearray, memoryview)):
            return int(h.write(_BYTES, b"", value))
        raise TypeError(
            f"SharedValue holds str, bytes or numpy.ndarray, not {type(value).__name__}"
        )

    def read(self) -> Value | None:
        """A consistent copy of the latest value (None if never written). Never blocks on a
        writer in the common case, never returns a half-written value."""
        h = self._handle
        if h is None:
            raise ValueError("SharedValue is closed")
        version, tag, meta, payload = h.read()
        if version > self._seen:
            self._seen = version
        if tag == _BYTES:
            return payload  # type: ignore[no-any-return]
        return _decode(tag, meta, payload)

    def read_versioned(self) -> tuple[int, Value | None]:
        """(version, value) read together: the version is the one of that value."""
        version, tag, meta, payload = self._h().read()
        if version > self._seen:
            self._seen = version
        return version, _decode(tag, meta, payload)

    def wait(self, timeout: float | None = None, since: int | None = None) -> int:
        """Blocks until ``version > since`` and returns the new version.

        ``since=None`` means the last version this handle has seen (at attach/create, its own
        last ``write``, or returned by ``read``/``read_versioned``/``wait``), so
        ``while True: v.wait(); v.read()`` misses no change that happened between the calls
        (intermediate versions may be coalesced: you get the latest). Sleeps on a futex with
        the GIL released; Ctrl-C raises KeyboardInterrupt. ``TimeoutError`` after ``timeout``
        seconds (``0``: do not wait).
        """
        h = self._h()
        base = self._seen if since is None else int(since)
        if base < 0:
            raise ValueError("since must be >= 0")
        if not h.wait(base, None if timeout is None else float(timeout)):
            raise TimeoutError(f"no new version of {self._name} after {base} within {timeout} s")
        version = int(h.version)
        if version > self._seen:
            self._seen = version
        return version

    def on_change(
        self,
        callback: Callable[[Any], object],
        *,
        on_error: Callable[[BaseException], object] | None = None,
    ) -> Subscription:
        """Calls ``callback(new_value)`` from a background thread after every change (changes
        that arrive while a callback runs are coalesced into the latest value).

        Returns a :class:`Subscription`; ``sub.stop()`` ends it, and ``close()`` stops all.
        Exceptions from the callback go to ``on_error`` (default: printed) and delivery goes on.
        """
        if not callable(callback):
            raise TypeError("callback must be callable")
        self._h()
        sub = Subscription(self, callback, on_error)
        with self._lock:
            self._subs = [s for s in self._subs if s.running]
            self._subs.append(sub)
        sub._start()
        return sub

    # -- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stops on_change deliveries, unmaps, and (owner, not persistent) removes the name.
        Idempotent. A thread blocked in ``wait`` on this handle gets ``ValueError``."""
        with self._lock:
            h, self._handle = self._handle, None
            subs, self._subs = self._subs, []
        if h is None:
            return
        for s in subs:
            s._stop.set()
        h.close()
        for s in subs:
            s.stop()

    def __enter__(self) -> SharedValue:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._handle is None:
            return f"<shmipc.SharedValue {self._name!r} closed>"
        return (
            f"<shmipc.SharedValue {self._name!r} size={self.size} version={self.version}"
            f"{' owner' if self.owner else ''}>"
        )


def _attach(cls: Any, name: str, trust_owner: int | str | None) -> SharedValue:
    v: SharedValue = cls.attach(name, trust_owner=trust_owner)
    return v
