"""Shared-memory file streams (API.md section 3).

``open_stream`` returns a real :mod:`io` file object over a real ``/dev/shm`` fd: binary modes
give ``io.BufferedRandom``/``BufferedReader``/``BufferedWriter`` (or the raw ``io.FileIO`` with
``buffering=0``), text modes an ``io.TextIOWrapper``. So ``os.read``/``os.write`` on
``fileno()``, :mod:`mmap`, :func:`shutil.copyfileobj`, :func:`numpy.fromfile` and
``print(file=f)`` all work. The owner creates the name and its close removes it (unless
``persistent``); guests open an existing name and never remove it.
"""

from __future__ import annotations

import atexit
import codecs
import grp
import io
import os
import weakref
from typing import IO, Any

from . import _core, _validate

__all__ = ["open_stream", "chmod", "chgrp", "stream_info"]

# Guest access levels of _core.stream_open.
_READ_ONLY = 0
_READ_WRITE = 1
_READ_WRITE_OR_READ_ONLY = 2


class _StreamFileIO(io.FileIO):
    """FileIO whose close() removes the shared-memory name when the owner closes.

    The name is removed before the fd is closed, while our owner lock still tells everyone the
    file is live, and only if the name still refers to our file (never to a newer object).
    """

    _shm_name: str
    _shm_remove: bool
    _shm_pid: int  # the owner process; a fork()ed child's copy never removes the name

    def truncate(self, size: int | None = None) -> int:
        """As FileIO.truncate; growing the file reserves its pages first (posix_fallocate),
        so a /dev/shm too small for it is OSError(ENOSPC) here, never a SIGBUS later in a
        mapping of the file."""
        target = self.tell() if size is None else size
        if isinstance(target, int) and not isinstance(target, bool) and target >= 0:
            fd = self.fileno()
            cur = os.fstat(fd).st_size
            if target > cur:
                os.posix_fallocate(fd, cur, target - cur)
        return super().truncate(size)

    def close(self) -> None:
        if not self.closed and getattr(self, "_shm_remove", False) and self._shm_pid == os.getpid():
            self._shm_remove = False
            _core.stream_release_name(self._shm_name, self.fileno())
        super().close()


# Owner streams whose name goes away when this process exits (see _release_names_at_exit).
_owned: weakref.WeakSet[_StreamFileIO] = weakref.WeakSet()


def _release_names_at_exit() -> None:
    """Removes the names of the non-persistent streams this process still owns at exit.

    The file objects stay usable (other atexit handlers may still write); only the name goes,
    as the owner's close() would have done. A crash leaves the name to the next creator.
    """
    for raw in list(_owned):
        try:
            if not raw.closed and raw._shm_remove and raw._shm_pid == os.getpid():
                raw._shm_remove = False
                _core.stream_release_name(raw._shm_name, raw.fileno())
        except Exception:  # noqa: BLE001 -- best effort at exit
            pass


atexit.register(_release_names_at_exit)


def _parse_mode(io_mode: str) -> tuple[str, bool, bool]:
    """(primary char 'r'/'w'/'a'/'x', plus, binary), validated like builtins.open."""
    if not isinstance(io_mode, str):
        raise TypeError(f"mode must be str, not {type(io_mode).__name__}")
    chars = set(io_mode)
    if len(chars) != len(io_mode) or not chars <= set("rwaxbt+") or not io_mode:
        raise ValueError(f"invalid mode: {io_mode!r}")
    primary = [c for c in io_mode if c in "rwax"]
    if len(primary) != 1:
        raise ValueError(f"invalid mode: {io_mode!r} (exactly one of r, w, a, x)")
    if "b" in chars and "t" in chars:
        raise ValueError(f"invalid mode: {io_mode!r} (binary and text)")
    return primary[0], "+" in chars, "b" in chars


def open_stream(
    name: str,
    io_mode: str = "r",
    /,
    *,
    owner: bool = False,
    mode: int = 0o600,
    persistent: bool = False,
    buffering: int = -1,
    encoding: str | None = None,
    errors: str | None = None,
    newline: str | None = None,
    trust_owner: int | str | None = None,
) -> IO[Any]:
    """Opens the shared-memory stream ``name`` (``/dev/shm/<name>``) as an io file object.

    ``io_mode`` is as for :func:`open` (``"rb"``, ``"w+b"``, ``"a"``, ``"r+"``...). Text mode
    defaults to UTF-8 (not the locale: both ends of an IPC stream must agree).

    Owner (``owner=True``): creates the name exclusively, empty, with exactly ``mode``
    permission bits (whatever the umask). ``FileExistsError`` if a live stream (or any other
    object) has the name; a non-persistent stream whose owner died is replaced. Closing the
    returned object (or the owner's exit, crash included, as detected by the next create)
    removes the name unless ``persistent=True``; ``shmipc.unlink(name)`` always does.

    Guest (default): opens an existing name, ``FileNotFoundError`` otherwise. ``"w"`` truncates
    it, ``"a"`` appends, ``"r"`` reads. ``"r+"`` falls back to read-only when the permission
    bits grant this process only read (check ``f.writable()``); ``"w"``/``"a"`` then raise
    ``PermissionError``. A guest's close never removes the name. A guest refuses
    (``PermissionError``) a stream owned by another user unless ``trust_owner`` is that user's
    uid or ``"any"`` (API.md §7), and any name that holds another shmipc kind
    (``FileExistsError`` naming the kind).

    Names: one optional leading '/', then 1..200 characters without '/' or NUL (ValueError).
    """
    primary, plus, binary = _parse_mode(io_mode)
    if binary:
        if encoding is not None or errors is not None or newline is not None:
            raise ValueError("binary mode doesn't take an encoding, errors or newline argument")
    elif buffering == 0:
        raise ValueError("can't have unbuffered text I/O")
    else:
        codecs.lookup(encoding or "utf-8")  # LookupError now, before anything is created
    _validate.name(name)
    _validate.mode(mode)
    trust_uid = _validate.trust_uid(trust_owner)
    if not isinstance(buffering, int):
        raise TypeError("buffering must be an int")
    norm = _core.normalize_name(name)
    append = primary == "a"
    if owner:
        fd = _core.stream_create(norm, mode, bool(persistent), append)
        readable = primary == "r" or plus
        writable = primary != "r" or plus
    else:
        if primary == "x":
            raise ValueError("mode 'x' creates: use owner=True")
        if persistent:
            raise ValueError("persistent=True applies to the owner (owner=True)")
        if primary == "r":
            access = _READ_WRITE_OR_READ_ONLY if plus else _READ_ONLY
        else:
            access = _READ_WRITE
        fd, can_write = _core.stream_open(norm, access, primary == "w", append, trust_uid)
        readable = primary == "r" or plus
        writable = bool(can_write) and (primary != "r" or plus)
    remove = bool(owner) and not persistent
    try:
        if append:
            raw_mode = "a+" if readable else "a"
        elif readable and writable:
            raw_mode = "r+"
        else:
            raw_mode = "w" if writable else "r"
        raw = _StreamFileIO(fd, raw_mode, closefd=True)
    except BaseException:
        if owner:  # a failed open leaves nothing behind, persistent or not
            _core.stream_release_name(norm, fd)
        os.close(fd)
        raise
    raw._shm_name = norm
    raw._shm_remove = remove
    raw._shm_pid = os.getpid()
    if remove:
        _owned.add(raw)
    raw.name = norm
    try:
        return _wrap(raw, io_mode, binary, buffering, encoding, errors, newline)
    except BaseException:
        if owner and not raw._shm_remove:  # persistent: close() would keep the name
            _core.stream_release_name(norm, raw.fileno())
        raw.close()
        raise


def _wrap(
    raw: _StreamFileIO,
    io_mode: str,
    binary: bool,
    buffering: int,
    encoding: str | None,
    errors: str | None,
    newline: str | None,
) -> IO[Any]:
    line_buffering = buffering == 1
    if buffering in (-1, 1):
        buffering = io.DEFAULT_BUFFER_SIZE
    if buffering == 0:
        return raw
    if buffering < 0:
        raise ValueError("invalid buffering size")
    buffer: io.BufferedIOBase
    if raw.readable() and raw.writable():
        buffer = io.BufferedRandom(raw, buffering)
    elif raw.writable():
        buffer = io.BufferedWriter(raw, buffering)
    else:
        buffer = io.BufferedReader(raw, buffering)
    if binary:
        return buffer
    text = io.TextIOWrapper(
        buffer,
        encoding=encoding or "utf-8",
        errors=errors,
        newline=newline,
        line_buffering=line_buffering,
    )
    text.mode = io_mode  # type: ignore[misc]
    return text


def chmod(name: str, mode: int) -> None:
    """Sets the permission bits of a shared-memory name (exactly; never follows a symlink)."""
    if not isinstance(mode, int) or isinstance(mode, bool):
        raise TypeError("mode must be permission bits such as 0o640")
    _core.chmod(name, mode)


def chgrp(name: str, group: int | str) -> None:
    """Sets the group (gid or group name) of a shared-memory name, e.g. to share it with
    the members of a group together with ``chmod(name, 0o660)``."""
    if isinstance(group, str):
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ValueError(f"no such group: {group!r}") from None
    elif isinstance(group, int) and not isinstance(group, bool):
        gid = group
    else:
        raise TypeError("group must be a gid or a group name")
    _core.chgrp(name, gid)


def stream_info(name: str) -> dict[str, Any]:
    """{"is_stream", "persistent", "owner_alive", "size"} of a name (FileNotFoundError if
    missing): whether it is a shmipc stream, and whether its owner is still alive."""
    return dict(_core.stream_info(name))
