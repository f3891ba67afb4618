"""asyncio, uvloop and trio/anyio support (API.md section 9).

Every awaitable here follows one pattern, so that no call ever holds the event loop while it
waits and cancellation never loses a message:

1. try the non-blocking operation (a receive with ``timeout=0``, ``get_nowait``...);
2. if it would block, *arm* the object: the engine's reactor (``src/ipc_core/sync/reactor``,
   a C++ thread that never takes the GIL) announces itself on the object's futex word, so the
   peer's next change issues a FUTEX_WAKE, and fires an eventfd when the word moves;
3. try again (a change published before the announcement is seen here);
4. await the eventfd: under asyncio/uvloop one eventfd per event loop, registered once with
   ``loop.add_reader``, wakes the future of the awaiting task; under trio (directly or through
   anyio) the task waits for its own eventfd with ``wait_readable``;
5. go to 1.

The only suspension point is step 4, where nothing has been taken yet: a task cancelled there
(``asyncio.wait_for``, ``task.cancel()``, a trio cancel scope) leaves every message queued.
A dead peer makes the reactor fire on its liveness slices; the retry then raises
:class:`~shmipc.PeerDiedError` as the blocking call would.
"""

from __future__ import annotations

import asyncio
import os
import queue
import select
import socket
import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from . import _core, _objects
from ._buffer import recv, recv_array
from ._errors import PeerDiedError

__all__ = ["arecv", "arecv_array", "reactor_info"]

_NO: Any = object()  # "would block" from an attempt
_FIRST, _RECHECK, _WOKEN = 0, 1, 2  # why an attempt runs
# An await that would block first retries for a while on the loop's thread (as the blocking
# calls spin before they sleep) -- but only while the loop has nothing else ready to run, so it
# never delays another task (asyncio's own loop; with uvloop or trio awaits go straight to the
# reactor). A peer that answers within the spin costs no thread wake-up at all: the reactor
# thread and the loop's wake-up are most of an awaited round trip, and a spin shorter than
# those wake-ups would let two awaiting peers settle into missing each other every time.
_AWAIT_SPIN = 200e-6
_AWAIT_SPIN_MAX = 1e-3


def _await_spin(obj: Any) -> float:
    """How long an await on `obj` may spin: 0 if its ``spin`` is 0 (the caller asked for no
    busy-waiting), else at least _AWAIT_SPIN and at most _AWAIT_SPIN_MAX."""
    own = getattr(obj, "spin", _AWAIT_SPIN)
    try:
        own = float(own)
    except (TypeError, ValueError):
        return _AWAIT_SPIN
    if own <= 0:
        return 0.0
    return min(max(own, _AWAIT_SPIN), _AWAIT_SPIN_MAX)


def _loop_idle(loop: asyncio.AbstractEventLoop) -> bool:
    """True if asyncio's loop has no other callback ready (uvloop: unknown, so False)."""
    ready = getattr(loop, "_ready", None)
    return ready is not None and not ready


# --- per event loop (asyncio, uvloop) ----------------------------------------------------------


class _Hub:
    """One eventfd per asyncio event loop: the reactor fires tokens into it, the loop's reader
    callback resolves the futures of the tokens that fired."""

    __slots__ = ("loop", "signal", "futs", "next", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.signal = _core.ReadySignal()
        self.futs: dict[int, asyncio.Future[None]] = {}
        self.next = 1
        loop.add_reader(self.signal.fileno(), self._on_ready)

    def _on_ready(self) -> None:
        futs = self.futs
        for tok in self.signal.take():
            fut = futs.pop(tok, None)
            if fut is not None and not fut.done():
                fut.set_result(None)

    def token(self, fut: asyncio.Future[None]) -> int:
        tok = self.next
        self.next = tok + 1
        self.futs[tok] = fut
        return tok


_hubs: dict[int, _Hub] = {}


def _hub(loop: asyncio.AbstractEventLoop) -> _Hub:
    h = _hubs.get(id(loop))
    if h is not None and h.loop is loop:
        return h
    # Forget hubs of closed loops (their eventfds close with them).
    for key, old in list(_hubs.items()):
        if old.loop.is_closed():
            del _hubs[key]
    h = _Hub(loop)
    _hubs[id(loop)] = h
    return h


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _library() -> str:
    try:
        asyncio.get_running_loop()
        return "asyncio"
    except RuntimeError:
        pass
    try:
        import sniffio

        return str(sniffio.current_async_library())
    except Exception:  # noqa: BLE001 -- no sniffio, or no async library at all
        raise RuntimeError("shmipc awaitables need a running asyncio or trio event loop") from None


async def _await_op(
    arm: Callable[[Any, int], int],
    attempt: Callable[[int], Any],
    timeout: float | None,
    spin: float = 0.0,
) -> Any:
    """Runs attempt(stage) until it returns something other than _NO, waiting between
    attempts on the object's word through the reactor. Returns _NO when the timeout passed.
    The stage says why it runs: _FIRST, _RECHECK (just armed, or spinning), _WOKEN (the
    reactor fired). Before arming, retries for up to `spin` seconds (bounded by the timeout)
    if the loop has nothing else to run."""
    if timeout is not None and timeout <= 0:
        return attempt(_WOKEN)  # one full attempt (a dead peer raises, as recv(timeout=0))
    r = attempt(_FIRST)
    if r is not _NO:
        return r
    if _library() != "asyncio":
        return await _await_op_fd(arm, attempt, timeout)
    loop = asyncio.get_running_loop()
    if spin > 0 and _loop_idle(loop):
        if timeout is not None:
            spin = min(spin, timeout)
        end = time.perf_counter() + spin
        while time.perf_counter() < end:
            r = attempt(_RECHECK)
            if r is not _NO:
                return r
            # Give the core away if anyone waits for it (the peer may be queued behind us on
            # a busy machine): without this a spin can delay the very reply it waits for.
            os.sched_yield()
    hub = _hub(loop)
    deadline = None if timeout is None else loop.time() + timeout
    while True:
        fut: asyncio.Future[None] = loop.create_future()
        tok = hub.token(fut)
        timer = None
        try:
            reg = arm(hub.signal, tok)
            try:
                r = attempt(_RECHECK)  # re-check after the announcement
                if r is not _NO:
                    return r
                if deadline is not None:
                    delay = deadline - loop.time()
                    if delay <= 0:
                        return _NO
                    timer = loop.call_later(delay, _expire, fut)
                await fut  # the only suspension point: nothing taken yet
            finally:
                _core.reactor_disarm(reg)
        finally:
            hub.futs.pop(tok, None)
            if timer is not None:
                timer.cancel()
        r = attempt(_WOKEN)
        if r is not _NO:
            return r
        if deadline is not None and loop.time() >= deadline:
            return _NO


async def _await_op_fd(
    arm: Callable[[Any, int], int],
    attempt: Callable[[int], Any],
    timeout: float | None,
) -> Any:
    """The same loop for trio (and anyio on trio): the task waits on its own eventfd."""
    try:
        import anyio

        wait_readable: Any = anyio.wait_readable
        move_on: Any = anyio.move_on_after
    except (ImportError, AttributeError):
        import trio  # type: ignore[import-untyped,unused-ignore]

        wait_readable = trio.lowlevel.wait_readable
        move_on = trio.move_on_after
    sig = _core.ReadySignal()
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        reg = arm(sig, 1)
        try:
            r = attempt(_RECHECK)
            if r is not _NO:
                return r
            if deadline is None:
                await wait_readable(sig.fileno())
            else:
                delay = deadline - time.monotonic()
                if delay <= 0:
                    return _NO
                with move_on(delay):
                    await wait_readable(sig.fileno())
        finally:
            _core.reactor_disarm(reg)
            sig.take()
        r = attempt(_WOKEN)
        if r is not _NO:
            return r
        if deadline is not None and time.monotonic() >= deadline:
            return _NO


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(
            f"timeout must be a number of seconds or None, not {type(timeout).__name__}"
        )
    t = float(timeout)
    if t != t:
        raise ValueError("timeout must not be NaN")
    return max(t, 0.0)


# --- ready_fd(): one eventfd per object, re-armed on every call --------------------------------


class _ReadyState:
    __slots__ = ("signal", "reg")

    def __init__(self) -> None:
        self.signal = _core.ReadySignal()
        self.reg = 0

    def __del__(self) -> None:
        if self.reg:
            try:
                _core.reactor_disarm(self.reg)
            except Exception:  # noqa: BLE001 -- interpreter shutdown
                pass


_ready: weakref.WeakKeyDictionary[Any, _ReadyState] = weakref.WeakKeyDictionary()


def _ready_fd(obj: Any) -> int:
    """The object's eventfd, armed: readable once it may have something. Every call re-arms
    (drains the fd, announces again, and makes it readable at once if something is there)."""
    st = _ready.get(obj)
    if st is None:
        st = _ReadyState()
        _ready[obj] = st
    if st.reg:
        _core.reactor_disarm(st.reg)
        st.reg = 0
    st.signal.take()
    st.reg = obj._wait_arm(st.signal, 0)
    if obj._wait_probe():
        st.signal.raise_()
    fd: int = st.signal.fileno()
    return fd


# --- channels ----------------------------------------------------------------------------------


class ChannelAsync:
    """Awaitables and ready_fd() of :class:`~shmipc.Channel` (a mixin)."""

    if TYPE_CHECKING:  # provided by Channel / ChannelCore

        @property
        def name(self) -> str: ...

        def recv(self, timeout: float | None = None) -> Any: ...
        def recv_array(self, timeout: float | None = None) -> Any: ...
        def recv_bytes(self, timeout: float | None = None) -> bytes: ...
        def send(self, obj: Any, timeout: float | None = None) -> None: ...
        def send_array(self, arr: Any, timeout: float | None = None) -> None: ...
        def _queued(self) -> int: ...
        def _stream_ended(self) -> bool: ...
        def _role(self) -> str | None: ...
        def _check_peer(self) -> None: ...
        def _recv_ready(self) -> bool: ...
        def _arm(self, recv: bool, signal: Any, token: int) -> int: ...

    # Receiving side -----------------------------------------------------------------------

    def _wait_probe(self) -> bool:
        ready: bool = self._recv_ready()
        return ready

    def _wait_arm(self, signal: Any, token: int) -> int:
        reg: int = self._arm(True, signal, token)
        return reg

    def ready_fd(self) -> int:
        """An eventfd that is readable when this channel may have a record to receive (or its
        stream ended, or its sender died). For selectors, trio/anyio ``wait_readable``, Qt's
        QSocketNotifier, GLib's ``unix_fd_add``. When it fires, receive with ``timeout=0``
        until ``TimeoutError``, then call ``ready_fd()`` again: each call re-arms the same fd
        (and returns it). The fd belongs to the channel: do not close it."""
        return _ready_fd(self)

    def _recv_attempt(self, how: Callable[[float], Any]) -> Callable[[int], Any]:
        def attempt(stage: int) -> Any:
            # A receive that finds nothing costs an exception: try it only when something is
            # there (or to claim the receiver role, which raises ChannelBusyError).
            if (
                self._queued()
                or self._stream_ended()
                or (stage == _FIRST and self._role() != "receiver")
            ):
                try:
                    return how(0)
                except TimeoutError:
                    pass
            if stage == _WOKEN:
                self._check_peer()  # PeerDiedError once drained
            return _NO

        return attempt

    async def arecv(self, timeout: float | None = None) -> Any:
        """``await ch.arecv()``: :meth:`recv` without blocking the event loop."""
        t = _check_timeout(timeout)
        r = await _await_op(self._wait_arm, self._recv_attempt(self.recv), t, _await_spin(self))
        if r is _NO:
            raise TimeoutError(f"nothing arrived on channel {self.name!r} within {timeout} s")
        return r

    async def arecv_array(self, timeout: float | None = None) -> Any:
        """``await ch.arecv_array()``: :meth:`recv_array` without blocking the event loop."""
        t = _check_timeout(timeout)
        r = await _await_op(
            self._wait_arm, self._recv_attempt(self.recv_array), t, _await_spin(self)
        )
        if r is _NO:
            raise TimeoutError(f"nothing arrived on channel {self.name!r} within {timeout} s")
        return r

    async def arecv_bytes(self, timeout: float | None = None) -> bytes:
        """``await ch.arecv_bytes()``: :meth:`recv_bytes` without blocking the event loop."""
        t = _check_timeout(timeout)
        r = await _await_op(
            self._wait_arm, self._recv_attempt(self.recv_bytes), t, _await_spin(self)
        )
        if r is _NO:
            raise TimeoutError(f"nothing arrived on channel {self.name!r} within {timeout} s")
        out: bytes = r
        return out

    def __aiter__(self) -> AsyncIterator[Any]:
        """``async for blk in ch``: Blocks until the end of the stream (a dead sender raises
        :class:`~shmipc.PeerDiedError`)."""
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[Any]:
        while True:
            try:
                blk = await self.arecv()
            except PeerDiedError:
                raise
            except EOFError:
                return
            yield blk

    # Sending side -------------------------------------------------------------------------

    def _send_attempt(self, how: Callable[[float], Any]) -> Callable[[int], Any]:
        def attempt(stage: int) -> Any:
            try:
                how(0)
                return True
            except TimeoutError:
                pass
            if stage == _WOKEN:
                self._check_peer()  # PeerDiedError: receiver gone
            return _NO

        return attempt

    def _send_arm(self, signal: Any, token: int) -> int:
        reg: int = self._arm(False, signal, token)
        return reg

    async def asend(self, obj: Any, timeout: float | None = None) -> None:
        """``await ch.asend(x)``: :meth:`send` without blocking the event loop while the
        channel is full (a Block stays the caller's until it is sent)."""
        t = _check_timeout(timeout)
        r = await _await_op(
            self._send_arm,
            self._send_attempt(lambda to: self.send(obj, timeout=to)),
            t,
            _await_spin(self),
        )
        if r is _NO:
            raise TimeoutError(f"channel {self.name!r} stayed full for {timeout} s")

    async def asend_array(self, arr: Any, timeout: float | None = None) -> None:
        """``await ch.asend_array(arr)``: :meth:`send_array` without blocking the loop."""
        t = _check_timeout(timeout)
        r = await _await_op(
            self._send_arm,
            self._send_attempt(lambda to: self.send_array(arr, timeout=to)),
            t,
            _await_spin(self),
        )
        if r is _NO:
            raise TimeoutError(f"channel {self.name!r} stayed full for {timeout} s")


# --- message queues ----------------------------------------------------------------------------


class SubscriberAsync:
    """Awaitables and ready_fd() of :class:`~shmipc.Subscriber` (a mixin)."""

    if TYPE_CHECKING:  # provided by Subscriber / SubscriberCore

        @property
        def name(self) -> str: ...

        def recv(self, timeout: float | None = None) -> Any: ...
        def recv_array(self, timeout: float | None = None) -> Any: ...
        def recv_bytes(self, timeout: float | None = None) -> bytes: ...
        def _recv_ready(self) -> bool: ...
        def _publisher_dead(self) -> bool: ...
        def _arm(self, signal: Any, token: int) -> int: ...

    def _wait_probe(self) -> bool:
        ready: bool = self._recv_ready()
        return ready

    def _wait_arm(self, signal: Any, token: int) -> int:
        reg: int = self._arm(signal, token)
        return reg

    def ready_fd(self) -> int:
        """An eventfd that is readable when this subscriber may have a sample (or the stream
        ended, or the publisher died). When it fires, receive with ``timeout=0`` until
        ``TimeoutError``, then call ``ready_fd()`` again (each call re-arms the same fd). The fd
        belongs to the subscriber: do not close it."""
        return _ready_fd(self)

    def _recv_attempt(self, how: Callable[[float], Any]) -> Callable[[int], Any]:
        def attempt(stage: int) -> Any:
            if self._recv_ready():
                try:
                    return how(0)
                except TimeoutError:
                    # Nothing pending: a dead publisher ends the wait (its samples drained).
                    if self._publisher_dead():
                        raise PeerDiedError(
                            f"the publisher of topic {self.name!r} is gone "
                            "(it died or left without closing)"
                        ) from None
            return _NO

        return attempt

    async def _arecv_with(self, how: Callable[[float], Any], timeout: float | None) -> Any:
        t = _check_timeout(timeout)
        r = await _await_op(self._wait_arm, self._recv_attempt(how), t, _await_spin(self))
        if r is _NO:
            raise TimeoutError(f"nothing arrived on topic {self.name!r} within {timeout} s")
        return r

    async def arecv(self, timeout: float | None = None) -> Any:
        """``await sub.arecv()``: :meth:`recv` without blocking the event loop."""
        return await self._arecv_with(self.recv, timeout)

    async def arecv_array(self, timeout: float | None = None) -> Any:
        """``await sub.arecv_array()``: :meth:`recv_array` without blocking the event loop."""
        return await self._arecv_with(self.recv_array, timeout)

    async def arecv_bytes(self, timeout: float | None = None) -> bytes:
        """``await sub.arecv_bytes()``: :meth:`recv_bytes` without blocking the event loop."""
        out: bytes = await self._arecv_with(self.recv_bytes, timeout)
        return out

    def __aiter__(self) -> AsyncIterator[Any]:
        """``async for s in sub``: samples until the publisher closes (a dead publisher raises
        :class:`~shmipc.PeerDiedError`)."""
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[Any]:
        while True:
            try:
                sample = await self.arecv()
            except PeerDiedError:
                raise
            except EOFError:
                return
            yield sample


class QueueAsync:
    """Awaitables and ready_fd() of :class:`~shmipc.MessageQueue` (a mixin)."""

    __slots__ = ()

    if TYPE_CHECKING:  # provided by MessageQueue

        def _handle(self) -> _core.MessageQueue: ...

    def _wait_probe(self) -> bool:
        return bool(self._handle().qsize() > 0)

    def _wait_arm(self, signal: Any, token: int) -> int:
        reg: int = self._handle()._arm(True, signal, token)
        return reg

    def _put_arm(self, signal: Any, token: int) -> int:
        reg: int = self._handle()._arm(False, signal, token)
        return reg

    def ready_fd(self) -> int:
        """An eventfd that is readable when the queue may hold a message (see
        ``Channel.ready_fd``: get without blocking until ``queue.Empty``, then call
        ``ready_fd()`` again to re-arm it)."""
        return _ready_fd(self)

    def _get_attempt(self) -> Callable[[int], Any]:
        h = self._handle()

        def attempt(stage: int) -> Any:
            if stage == _RECHECK and h.qsize() == 0:
                return _NO  # (a commit before our announcement shows in qsize)
            try:
                # After a wake, the zero-timeout blocking path also repairs messages that dead
                # consumers had claimed (it is only a few microseconds more).
                return h.get_bytes(stage == _WOKEN, 0.0)
            except TimeoutError:  # the engine's "nothing now"
                return _NO

        return attempt

    async def aget_bytes(self, timeout: float | None = None) -> bytes:
        """``await q.aget_bytes()``: :meth:`get_bytes` without blocking the event loop;
        ``queue.Empty`` after ``timeout`` seconds."""
        t = _check_timeout(timeout)
        r = await _await_op(self._wait_arm, self._get_attempt(), t, _await_spin(self))
        if r is _NO:
            raise queue.Empty
        out: bytes = r
        return out

    async def aget(self, timeout: float | None = None) -> Any:
        """``await q.aget()``: :meth:`get` without blocking the event loop."""
        # Out-of-band buffers (shmipc/_objects.py) are decoded as get() does.
        return self._decode(await self.aget_bytes(timeout))  # type: ignore[attr-defined]

    async def aput_bytes(self, data: Any, timeout: float | None = None) -> None:
        """``await q.aput_bytes(b)``: :meth:`put_bytes` without blocking the event loop;
        ``queue.Full`` after ``timeout`` seconds."""
        t = _check_timeout(timeout)
        h = self._handle()

        def attempt(stage: int) -> Any:
            try:
                h.put_bytes(data, False, None)
                return True
            except TimeoutError:  # the engine's "no room now"
                return _NO

        r = await _await_op(self._put_arm, attempt, t, _await_spin(self))
        if r is _NO:
            raise queue.Full

    async def aput(self, obj: Any, timeout: float | None = None) -> None:
        """``await q.aput(obj)``: :meth:`put` without blocking the event loop."""
        msg, heap, refs = self._encode(self._handle(), obj)  # type: ignore[attr-defined]
        try:
            await self.aput_bytes(msg, timeout)
        except BaseException:  # cancelled or full: the out-of-band blocks go back
            if refs:
                _objects.drop_refs(heap, refs)
            raise


# --- shared values -----------------------------------------------------------------------------


class ValueAsync:
    """await_change(), changes() and ready_fd() of :class:`~shmipc.SharedValue` (a mixin)."""

    __slots__ = ()

    if TYPE_CHECKING:  # provided by SharedValue
        _seen: int
        _name: str

        def _h(self) -> Any: ...
        def read(self) -> Any: ...

    def _wait_probe(self) -> bool:
        return bool(self._h().version > self._seen)

    def _wait_arm(self, signal: Any, token: int) -> int:
        reg: int = self._h()._arm(signal, token)
        return reg

    def ready_fd(self) -> int:
        """An eventfd that is readable when the value has a version this handle has not seen
        (``read``/``wait``/``await_change`` mark versions seen); call ``ready_fd()`` again
        after reading to re-arm it."""
        return _ready_fd(self)

    async def await_change(self, since: int | None = None, timeout: float | None = None) -> int:
        """``await v.await_change()``: :meth:`wait` without blocking the event loop. Returns the
        new version (> ``since``; ``None``: the last version this handle has seen);
        ``TimeoutError`` after ``timeout`` seconds."""
        t = _check_timeout(timeout)
        h = self._h()
        base = self._seen if since is None else int(since)
        if base < 0:
            raise ValueError("since must be >= 0")

        def attempt(stage: int) -> Any:
            v = int(h.version)
            return v if v > base else _NO

        r = await _await_op(self._wait_arm, attempt, t)
        if r is _NO:
            raise TimeoutError(f"no new version of {self._name} after {base} within {timeout} s")
        if r > self._seen:
            self._seen = r  # type: ignore[misc]  # a slot of SharedValue
        version: int = r
        return version

    async def changes(self) -> AsyncIterator[Any]:
        """``async for value in v.changes()``: the value after each change (versions written
        in quick succession may be coalesced: you get the latest, never a stale one)."""
        while True:
            await self.await_change()
            yield self.read()


# --- sockets -----------------------------------------------------------------------------------


async def _sock_readable(fd: int, timeout: float | None) -> bool:
    if _library() != "asyncio":
        try:
            import anyio

            wait_readable: Any = anyio.wait_readable
            move_on: Any = anyio.move_on_after
        except (ImportError, AttributeError):
            import trio  # type: ignore[import-untyped,unused-ignore]

            wait_readable = trio.lowlevel.wait_readable
            move_on = trio.move_on_after
        if timeout is None:
            await wait_readable(fd)
            return True
        with move_on(timeout) as scope:
            await wait_readable(fd)
        return not scope.cancelled_caught
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, _expire, fut)
    try:
        if timeout is None:
            await fut
            return True
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except asyncio.TimeoutError:
            return False
    finally:
        loop.remove_reader(fd)


def _fd_of(sock: Any) -> int:
    fd = sock if isinstance(sock, int) else sock.fileno()
    if not isinstance(fd, int) or fd < 0:
        raise ValueError("the socket is closed")
    return fd


# A message is one sendmsg: once its first byte is readable the rest is there (or follows at
# once); the receive of the rest is bounded by this, so a peer stalled mid-message cannot hold
# the loop for long.
_REST_OF_MESSAGE = 1.0


def _readable_now(fd: int) -> bool:
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(0))


async def _arecv_with(sock: Any, recv: Callable[..., Any], timeout: float | None) -> Any:
    t = _check_timeout(timeout)
    fd = _fd_of(sock)
    deadline = None if t is None else time.monotonic() + t
    while True:
        if _readable_now(fd):  # a message, or EOF (recv raises EOFError)
            return recv(sock, timeout=_REST_OF_MESSAGE)
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise TimeoutError(f"nothing arrived on the socket within {timeout} s")
        await _sock_readable(fd, remaining)


async def arecv(sock: socket.socket | int, timeout: float | None = None) -> Any:
    """``await shmipc.arecv(sock)``: :func:`shmipc.recv` without blocking the event loop (the
    socket is watched by the loop itself: ``add_reader`` under asyncio, ``wait_readable`` under
    trio; no thread)."""
    return await _arecv_with(sock, recv, timeout)


async def arecv_array(sock: socket.socket | int, timeout: float | None = None) -> Any:
    """``await shmipc.arecv_array(sock)``: :func:`shmipc.recv_array` without blocking the loop."""
    return await _arecv_with(sock, recv_array, timeout)


def reactor_info() -> dict[str, Any]:
    """How this process waits: ``{"mode": "futex_waitv" | "threads", "armed", "threads"}``."""
    return {
        "mode": _core.reactor_mode(),
        "armed": int(_core.reactor_armed()),
        "threads": int(_core.reactor_threads()),
    }
