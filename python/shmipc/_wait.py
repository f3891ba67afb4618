"""shmipc.wait(): block until any of many objects can be received from (API.md section 9).

Like :func:`multiprocessing.connection.wait`: channels, queues, shared values (and anything else
with the ``_wait_probe``/``_wait_arm`` pair, such as topic subscribers), plus sockets, raw fds
and objects with ``fileno()``. One eventfd per call collects the reactor's wake-ups for every
shared-memory object (so 1,000 objects cost one fd, not 1,000); sockets go to ``poll`` as they
are.
"""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Iterable
from typing import Any

from . import _core

__all__ = ["wait"]

_local = threading.local()


def _signal() -> Any:
    sig = getattr(_local, "signal", None)
    if sig is None:
        sig = _local.signal = _core.ReadySignal()
    return sig


def _fd(obj: Any) -> int | None:
    if isinstance(obj, bool):
        raise TypeError("wait() got a bool, not an object to wait on")
    if isinstance(obj, int):
        return obj
    fileno = getattr(obj, "fileno", None)
    if fileno is None:
        raise TypeError(f"wait() cannot wait on a {type(obj).__name__}")
    fd = fileno()
    if not isinstance(fd, int) or fd < 0:
        raise ValueError(f"{obj!r} is closed")
    return fd


def wait(objects: Iterable[Any], timeout: float | None = None) -> list[Any]:
    """Waits until at least one of ``objects`` can be received from without blocking and returns
    those that can (in the order given), or ``[]`` after ``timeout`` seconds (``None``: no
    limit, ``0``: just look).

    Ready means: a Channel has a record queued, its stream ended or its sender died (``recv``
    returns or raises at once); a MessageQueue is not empty; a SharedValue has a version this
    handle has not seen; a socket or fd is readable. Readiness is a snapshot: another consumer
    may take a queue's message first (receive with ``timeout=0`` then).
    """
    objs = list(objects)
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
        if timeout != timeout:
            raise ValueError("timeout must not be NaN")
    deadline = None if timeout is None else time.monotonic() + max(float(timeout), 0.0)
    shm: list[tuple[int, Any]] = []
    fds: dict[int, list[int]] = {}
    for i, o in enumerate(objs):
        if hasattr(o, "_wait_probe"):
            shm.append((i, o))
        else:
            fd = _fd(o)
            assert fd is not None
            fds.setdefault(fd, []).append(i)
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)

    def ready_now() -> list[Any]:
        hit = {i for i, o in shm if o._wait_probe()}
        if fds:
            for fd, ev in poller.poll(0):
                if ev and fd in fds:
                    hit.update(fds[fd])
        return [objs[i] for i in sorted(hit)]

    ready = ready_now()
    if ready or not objs:
        return ready
    sig = _signal()
    poller.register(sig.fileno(), select.POLLIN)
    while True:
        if deadline is not None and time.monotonic() >= deadline:
            return []
        regs: list[int] = []
        try:
            for i, o in shm:
                regs.append(o._wait_arm(sig, i))
            ready = ready_now()  # re-check after the announcements
            if ready:
                return ready
            if deadline is None:
                ms = 1000  # bounded sleeps: Ctrl-C is seen between them
            else:
                ms = max(0, min(1000, int((deadline - time.monotonic()) * 1000) + 1))
            poller.poll(ms)
        finally:
            for r in regs:
                _core.reactor_disarm(r)
            sig.take()
        ready = ready_now()
        if ready:
            return ready
