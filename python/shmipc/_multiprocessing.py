"""Hand-over of shmipc objects to multiprocessing children (spawn, forkserver, fork).

Anonymous objects travel by fd: multiprocessing's own ``DupFd`` passes the descriptor to a
child being spawned, or through its resource sharer for Queue/Pipe transfers, exactly as it
does for sockets. Plain ``pickle`` does not use these reducers, so it reaches the classes'
``__reduce_ex__``, which raises a clear TypeError.
"""

from __future__ import annotations

from multiprocessing import reduction
from typing import Any, Protocol, TypeVar


class _FdHandover(Protocol):
    def fileno(self) -> int: ...
    def _mp_state(self) -> Any: ...


T = TypeVar("T")


def _rebuild(cls: Any, dupfd: Any, state: Any) -> Any:
    fd = dupfd.detach()
    return cls._mp_rebuild(fd, state)


def register_fd_reducer(cls: type[T]) -> type[T]:
    """Registers ``cls`` with multiprocessing's pickler: it travels as (fd, state)."""

    def _reduce(obj: Any) -> Any:
        state = obj._mp_state()
        return _rebuild, (cls, reduction.DupFd(obj.fileno()), state)

    reduction.register(cls, _reduce)
    return cls
