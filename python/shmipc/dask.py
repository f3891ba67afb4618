"""Dask distributed comm backend ``shm://`` (API.md section 12; optional extra ``shmipc[dask]``).

Distributed finds it through the ``distributed.comm.backends`` entry point ``shm``::

    LocalCluster(protocol="shm://")        # or: dask scheduler --protocol shm

Addresses are ``shm://HOST:PORT``. A listener listens on TCP and on an abstract Unix socket
named from the same address. A connector on the same host (same kernel and network
namespace: abstract Unix names exist per network namespace, and the handshake compares boot
id and namespace inode) talks over that Unix socket; every other connector uses TCP, through
distributed's own TCP comm, so one cluster spans hosts.

On a Unix connection every frame of at least ``shmipc.dask.min-frame`` bytes (64 KiB) is
copied once into a memfd segment that travels by fd (SCM_RIGHTS); the receiver maps it and
hands distributed a writable memoryview, so NumPy arrays deserialize without a copy. Smaller
frames travel inline on the socket. Segments are lent, not given: when the receiver has
dropped every view of a segment it says so on the connection, and the sender reuses the
segment (its pages are already allocated and mapped, which is what makes the copy cheap).
Each process keeps at most ``shmipc.dask.pool-size`` bytes of segments for reuse, and maps
as many bytes of segments it received and released (to map them again for free when they
come back).

I/O is non-blocking on the event loop (``add_reader``/``add_writer``), no thread per comm.
"""

from __future__ import annotations

import array
import asyncio
import collections
import errno
import fcntl
import ipaddress
import itertools
import logging
import mmap
import os
import resource
import socket
import stat
import struct
import sys
import threading
import uuid
import weakref
from collections.abc import Sequence
from typing import Any

import dask
import numpy as np
from dask.utils import parse_bytes, parse_timedelta
from distributed.comm.addressing import parse_host_port, unparse_host_port
from distributed.comm.core import Comm, CommClosedError
from distributed.comm.tcp import TCP, BaseTCPBackend, TCPConnector, TCPListener
from distributed.comm.utils import (
    OFFLOAD_THRESHOLD,
    from_frames,
    get_tcp_server_addresses,
    to_frames,
)
from distributed.system import MEMORY_LIMIT
from distributed.utils import ensure_memoryview, offload

from . import _core
from ._errors import CorruptSegmentError

__all__ = [
    "ShmBackend",
    "ShmComm",
    "ShmConnector",
    "ShmListener",
    "ShmTCP",
    "release_idle_memory",
    "transfer_stats",
]

logger = logging.getLogger(__name__)

PREFIX = "shm://"

# ---------------------------------------------------------------------------------------------
# Wire format (little endian) of a Unix connection.
#
# Handshake, before any record: the connector sends HELLO (magic, version, boot id, network
# namespace inode, then the address it dialed and its own local address as text), the listener
# answers WELCOME (magic, version, boot id, namespace inode, status; 0 = accepted).
#
# Then records, each starting with REC:
#   MESSAGE  kind=1, count=frames, nseg=segments, inline=bytes of inline frames; followed by
#            nseg SEG descriptors, count FRAME descriptors, then the inline frames' bytes in
#            order. The nseg memfds ride on the record's first byte (one sendmsg, SCM_RIGHTS).
#   RELEASE  kind=2, count=ids; followed by count u64 lend ids: the receiver dropped every view
#            of those segments, the sender may write them again.

_MAGIC = b"shmipcDK"
_VERSION = 1
# magic, version, boot id, netns inode, len(dialed address), len(local address)
_HELLO = struct.Struct("<8sH16sQHH")
_WELCOME = struct.Struct("<8sH16sQH")  # magic, version, boot id, netns inode, status
_REC = struct.Struct("<BxxxIIxxxxQ")  # kind, count, nseg, inline bytes
_SEG = struct.Struct("<QQ")  # lend id, bytes the frames may use
_FRAME = struct.Struct("<QIxxxxQ")  # bytes, segment index or _INLINE, offset in the segment
_ID = struct.Struct("<Q")
_INLINE = 0xFFFFFFFF
_KIND_MESSAGE = 1
_KIND_RELEASE = 2

_MAX_SEGMENTS = 32  # memfds per message (and per sendmsg); further large frames share the last
_MAX_FRAMES = 1 << 20
_MAX_INLINE = 256 << 20  # a receiver refuses more inline bytes in one message
_INLINE_SOFT = 64 << 20  # a sender moves small frames into a segment past this many
_MAX_RELEASE = 4096  # ids per RELEASE record
_MAX_NAME = 255  # bytes of an address in HELLO
_RBUF = 256 << 10  # read buffer of a connection
_DIRECT = 64 << 10  # inline bytes still missing from which reads go straight into the message
_ANCILLARY = socket.CMSG_SPACE(4 * (_MAX_SEGMENTS + 8))  # room to see (and refuse) extra fds
_IOV = 512  # buffers per sendmsg (IOV_MAX is 1024)
_PAUSE_MESSAGES = 16  # unread messages at which a connection stops reading
_NO_SPLIT = 1 << 62  # segments hold a frame of any size: no sharding

# Threads a large frame is copied on (this process's CPUs, at most 2).
_COPY_THREADS = max(1, min(2, len(os.sched_getaffinity(0))))

_UNIX_NAME = "\0shmipc-dask/{host}/{port}"

# Python < 3.13 keeps a dup of the fd for every mmap object (trackfd=False came with 3.13).
_MMAP_KW: dict[str, Any] = {"trackfd": False} if sys.version_info >= (3, 13) else {}


# ---------------------------------------------------------------------------------------------
# statistics


_stats: collections.Counter[str] = collections.Counter()


def transfer_stats() -> dict[str, int]:
    """Counters of this process's ``shm://`` traffic since it started (for tests and tuning).

    ``unix_comms``/``tcp_comms``: connections made or accepted over each transport;
    ``segment_frames_sent``/``segment_bytes_sent``: frames copied into memfd segments;
    ``inline_bytes_sent``: bytes of small frames written to Unix sockets;
    ``segment_bytes_received``/``inline_bytes_received``: the same on the receiving side;
    ``segments_created``/``segments_reused``: segment allocations and reuses of lent-back ones;
    ``mappings_reused``: received segments that were still mapped from an earlier use;
    ``releases_received``: segments that peers lent back; ``tcp_bytes_sent``: bytes written
    by TCP comms; ``pool_free_bytes``/``pool_lent_mapped_bytes``/``cache_bytes``: what this
    process holds now (idle segments, lent segments it still maps, mapped released ones).
    """
    out = {
        k: 0
        for k in (
            "unix_comms",
            "tcp_comms",
            "segment_frames_sent",
            "segment_bytes_sent",
            "inline_bytes_sent",
            "segment_bytes_received",
            "inline_bytes_received",
            "segments_created",
            "segments_reused",
            "mappings_reused",
            "releases_received",
            "tcp_bytes_sent",
        )
    }
    out.update(_stats)
    out["pool_free_bytes"] = _pool.free_bytes
    out["pool_lent_mapped_bytes"] = _pool.lent_mapped_bytes
    out["cache_bytes"] = _cache.nbytes
    return out


# ---------------------------------------------------------------------------------------------
# configuration and host identity


def _config_bytes(key: str, default: int) -> int:
    value = dask.config.get(key, default)
    return int(parse_bytes(value) if isinstance(value, str) else value)


def _min_frame() -> int:
    return max(1, _config_bytes("shmipc.dask.min-frame", 64 << 10))


def _pool_size() -> int:
    # Idle and lent-but-mapped segments show in this process's RSS: keep it a small part of RAM.
    return max(0, _config_bytes("shmipc.dask.pool-size", min(1 << 30, int(MEMORY_LIMIT) // 8)))


def _connect_timeout() -> float:
    t = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), default="seconds")
    return float(t if t is not None else 30)


_identity: tuple[bytes, int] | None = None


def _host_identity() -> tuple[bytes, int]:
    """This kernel's boot id and this process's network namespace inode."""
    global _identity
    if _identity is None:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = uuid.UUID(f.read().strip()).bytes
        _identity = (boot, os.stat("/proc/self/ns/net").st_ino)
    return _identity


def _host_key(host: str) -> str:
    """The host part of a Unix socket name: the canonical IP, or ``*`` for a wildcard."""
    if host in ("", "0.0.0.0", "::"):
        return "*"
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host


def _unix_name(host: str, port: int) -> str:
    return _UNIX_NAME.format(host=_host_key(host), port=port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _name_keys(host: str) -> list[str]:
    """Host keys a listener on `host` answers for: ``*``, its IP, or a hostname's IPs."""
    if _host_key(host) == "*" or _is_ip(host):
        return [_host_key(host)]
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return sorted({_host_key(str(info[4][0])) for info in infos})


def _free_port(host: str) -> int:
    """A TCP port free on `host` now (the listener binds it next, and retries if it is taken)."""
    concrete = _is_ip(host) and _host_key(host) != "*"
    family = socket.AF_INET6 if _is_ip(host) and ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host if concrete else "", 0))
        return int(s.getsockname()[1])


def _is_local_ip(ip: str) -> bool:
    """Whether `ip` is an address of this network namespace (binding to it succeeds)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((ip, 0))
        return True
    except OSError:
        return False


def _raise_fd_limit() -> None:
    """Below Python 3.13 every mapped segment holds a descriptor; a worker holding many
    received arrays needs more than the usual soft limit (dask scheduler raises it too)."""
    if _MMAP_KW:
        return
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        if soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError):
        pass


# ---------------------------------------------------------------------------------------------
# segments: memfds a sender fills and lends, and the pool that reuses them


def _capacity(need: int) -> int:
    """Bytes to allocate for `need`: whole pages, and above 1 MiB one of 8 sizes per doubling
    (at most 1/8 wasted) so that segments fit the next array of about the same size."""
    step = mmap.PAGESIZE
    if need > 1 << 20:
        step = max(step, 1 << (need.bit_length() - 4))
    return -(-need // step) * step


class _Segment:
    """A memfd sealed against resizing, mapped shared and writable while this process may
    write it. The mapping goes while a peer holds it if the pool budget is spent."""

    __slots__ = ("fd", "size", "map")

    def __init__(self, size: int) -> None:
        fd = os.memfd_create("shmipc-dask", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            try:
                # Reserved now: a full memory cgroup is an error here, never a SIGBUS later.
                os.posix_fallocate(fd, 0, size)
            except OSError as e:
                raise MemoryError(
                    f"cannot allocate a shared-memory segment of {size} bytes: {e.strerror}"
                ) from None
            # The receiver can never be SIGBUSed by a shrink (it checks this seal).
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
            self.map: mmap.mmap | None = mmap.mmap(
                fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, **_MMAP_KW
            )
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.size = size

    def fill(self, offset: int, frame: memoryview) -> None:
        assert self.map is not None
        # The engine's bulk copy: streaming stores from 4 MiB (the receiver reads the bytes, on
        # another core), on two threads from 32 MiB (one core does not reach the memory
        # bandwidth); for 100 MB about 1.7x (one thread) to 2.5x (two) glibc's memcpy on the
        # machine of benchmarks/RESULTS.md. The GIL is released. Frames come from
        # ensure_memoryview: 1-D, contiguous.
        _core._copy_into(self.map, offset, frame, _COPY_THREADS)

    def unmap(self) -> None:
        if self.map is not None:
            self.map.close()
            self.map = None

    def close(self) -> None:
        self.unmap()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _Pool:
    """This process's segments for reuse. Free ones are mapped (warm); lent ones stay mapped
    while the bytes they and the free ones hold fit the pool size. Thread-safe: copies run in
    distributed's offload thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[_Segment] = []  # oldest first
        self.free_bytes = 0
        self.lent_mapped_bytes = 0
        self._pid = os.getpid()

    def _check_fork(self) -> None:
        # A forked child must not reuse its parent's segments: both would write them.
        if os.getpid() != self._pid:
            self._free = []
            self.free_bytes = self.lent_mapped_bytes = 0
            self._pid = os.getpid()

    def take(self, need: int) -> _Segment:
        with self._lock:
            self._check_fork()
            best: _Segment | None = None
            for s in self._free:
                if need <= s.size <= 2 * need and (best is None or s.size < best.size):
                    best = s
            if best is not None:
                self._free.remove(best)
                self.free_bytes -= best.size
                _stats["segments_reused"] += 1
                return best
        seg = _Segment(_capacity(need))
        with self._lock:  # counted under the lock: copies run in the offload thread too
            _stats["segments_created"] += 1
        return seg

    def lent(self, seg: _Segment, budget: int) -> None:
        """`seg` went to a peer: keep it mapped for its return if the budget allows, making
        room by freeing idle segments (the one in use now is likelier to be wanted again)."""
        evicted: list[_Segment] = []
        with self._lock:
            while self._free and self.free_bytes + self.lent_mapped_bytes + seg.size > budget:
                old = self._free.pop(0)
                self.free_bytes -= old.size
                evicted.append(old)
            keep = self.free_bytes + self.lent_mapped_bytes + seg.size <= budget
            if keep:
                self.lent_mapped_bytes += seg.size
        for s in evicted:
            s.close()
        if not keep:
            seg.unmap()

    def returned(self, seg: _Segment, budget: int, was_lent: bool = True) -> None:
        """The peer dropped every view of `seg` (or it never left): reuse it if mapped."""
        evicted: list[_Segment] = []
        with self._lock:
            if was_lent and seg.map is not None:
                self.lent_mapped_bytes -= seg.size
            if seg.map is None or seg.size > budget:
                evicted.append(seg)
            else:
                self._free.append(seg)
                self.free_bytes += seg.size
                while self._free and self.free_bytes + self.lent_mapped_bytes > budget:
                    old = self._free.pop(0)
                    self.free_bytes -= old.size
                    evicted.append(old)
        for s in evicted:
            s.close()

    def clear(self) -> int:
        """Frees every idle segment; returns their bytes."""
        with self._lock:
            idle, self._free = self._free, []
            freed, self.free_bytes = self.free_bytes, 0
        for s in idle:
            s.close()
        return freed

    def orphaned(self, seg: _Segment) -> None:
        """The connection ended while the peer may still use `seg`: never write it again."""
        with self._lock:
            if seg.map is not None:
                self.lent_mapped_bytes -= seg.size
        seg.close()


_pool = _Pool()


class _MapCache:
    """Mappings of received segments whose views are all gone, by file: when the sender
    lends the same segment again, its pages are mapped already (no page faults)."""

    _MAX_ENTRIES = 64

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._maps: collections.OrderedDict[tuple[int, int], mmap.mmap] = collections.OrderedDict()
        self.nbytes = 0
        self._pid = os.getpid()

    def take(self, key: tuple[int, int], size: int) -> mmap.mmap | None:
        with self._lock:
            if os.getpid() != self._pid:  # forked: the parent's mappings are not ours to reuse
                self._maps.clear()
                self.nbytes = 0
                self._pid = os.getpid()
            m = self._maps.get(key)
            if m is None or len(m) != size:
                return None
            del self._maps[key]
            self.nbytes -= size
            return m

    def clear(self) -> int:
        with self._lock:
            maps = list(self._maps.values())
            self._maps.clear()
            freed, self.nbytes = self.nbytes, 0
        for m in maps:
            try:
                m.close()
            except BufferError:
                pass
        return freed

    def put(self, key: tuple[int, int], m: mmap.mmap, budget: int) -> None:
        evicted: list[mmap.mmap] = []
        with self._lock:
            old = self._maps.pop(key, None)
            if old is not None:
                self.nbytes -= len(old)
                evicted.append(old)
            if len(m) <= budget:
                self._maps[key] = m
                self.nbytes += len(m)
            while self._maps and (self.nbytes > budget or len(self._maps) > self._MAX_ENTRIES):
                _, gone = self._maps.popitem(last=False)
                self.nbytes -= len(gone)
                evicted.append(gone)
        for g in evicted:
            try:
                g.close()
            except BufferError:
                pass  # still exported somewhere: unmapped when collected


_cache = _MapCache()


def release_idle_memory() -> int:
    """Frees the segments this process keeps for reuse and unmaps the released segments it
    keeps mapped; returns how many bytes that gave back. Transfers work as before (the next
    ones allocate and map again). On a cluster: ``client.run(release_idle_memory)``."""
    return _pool.clear() + _cache.clear()


def _map_received(fd: int, nbytes: int) -> tuple[np.ndarray, tuple[int, int] | None, Any]:
    """Validates a received fd like shmipc.recv (a memory file, sealed against shrinking, at
    least `nbytes` long) and maps it writable. Returns the array that exports the segment's
    views, the cache key (None for a private mapping) and the mapping. Always closes `fd`."""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CorruptSegmentError("received fd is not a memory file")
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        except OSError:
            raise CorruptSegmentError("received fd is not a sealable memfd") from None
        if not seals & fcntl.F_SEAL_SHRINK:
            raise CorruptSegmentError("received memfd is not sealed against shrinking")
        if st.st_size < nbytes:
            raise CorruptSegmentError(
                f"received memfd is smaller ({st.st_size} bytes) than announced ({nbytes})"
            )
        key: tuple[int, int] | None = (st.st_dev, st.st_ino)
        m = _cache.take((st.st_dev, st.st_ino), st.st_size)
        if m is not None:
            _stats["mappings_reused"] += 1
        elif seals & (fcntl.F_SEAL_WRITE | getattr(fcntl, "F_SEAL_FUTURE_WRITE", 0)):
            # Immutable for everyone: a private mapping still gives writable views (copy on
            # write), and it is never cached (its written pages are ours alone).
            key = None
            m = mmap.mmap(
                fd, st.st_size, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE, **_MMAP_KW
            )
        else:
            m = mmap.mmap(
                fd, st.st_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, **_MMAP_KW
            )
        return np.frombuffer(m, np.uint8, count=nbytes), key, m
    finally:
        os.close(fd)


def _views_gone(channel_ref: weakref.ref[_Channel], lend_id: int, key: Any, m: Any) -> None:
    """Runs (in whichever thread dropped the last view) when a received segment is unused."""
    ch = channel_ref()
    if ch is None or ch.closed:
        return  # the sender forgot the segment: let the mapping go, the memory with it
    if key is not None:
        _cache.put(key, m, ch.budget)
    ch.release_later(lend_id)


# ---------------------------------------------------------------------------------------------
# the Unix connection


class _Out:
    """One record waiting to be written."""

    __slots__ = ("bufs", "pos", "fds", "segs", "sent_fds", "future")

    def __init__(self, bufs: list[memoryview], fds: list[int], segs: list[tuple[int, _Segment]]):
        self.bufs = bufs
        self.pos = 0
        self.fds = fds
        self.segs = segs  # (lend id, segment)
        self.sent_fds = False
        self.future: asyncio.Future[None] | None = None


class _In:
    """A message being received: its descriptors, then its inline bytes."""

    __slots__ = ("fds", "inline", "descs", "descs_filled", "body", "filled", "ready")

    def __init__(self, fds: list[int], inline: int, descs: int) -> None:
        self.fds = fds  # owned until mapped or closed
        self.inline = inline
        self.descs = memoryview(bytearray(descs))
        self.descs_filled = 0
        self.body = memoryview(bytearray(inline))
        self.filled = 0
        self.ready = descs == 0  # descriptors complete


class _Channel:
    """The Unix-socket side of a ShmComm: non-blocking reads and writes on the event loop,
    fds in transit, segments lent to the peer. Holds no reference to its comm."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.loop = loop
        self.thread = threading.get_ident()
        self.closed = False
        self.error: BaseException | None = None
        self.budget = _pool_size()
        self.min_frame = _min_frame()
        self.label = "<shm:// connection>"
        # reading
        self._rbuf = bytearray(_RBUF)
        self._rmv = memoryview(self._rbuf)
        self._rpos = 0
        self._rend = 0
        self._fds: collections.deque[int] = collections.deque()
        self._in: _In | None = None
        self._release_count = -1  # ids still expected by a RELEASE record being read
        self._inbox: collections.deque[list[memoryview]] = collections.deque()
        self._waiter: asyncio.Future[list[memoryview]] | None = None
        self._reading = False
        # writing
        self._out: collections.deque[_Out] = collections.deque()
        self._writing = False
        self._lent: dict[int, _Segment] = {}
        self._releases: list[int] = []
        self._release_lock = threading.Lock()
        self._release_scheduled = False
        self._self_ref = weakref.ref(self)
        self._resume_reading()

    # ---- reading

    def _resume_reading(self) -> None:
        if not self._reading and not self.closed:
            self.loop.add_reader(self.fd, self._on_readable)
            self._reading = True

    def _pause_reading(self) -> None:
        if self._reading:
            self.loop.remove_reader(self.fd)
            self._reading = False

    def _direct_target(self) -> memoryview | None:
        st = self._in
        if st is None or self._rpos != self._rend:
            return None
        if not st.ready:
            if len(st.descs) - st.descs_filled >= _DIRECT:
                return st.descs[st.descs_filled :]
        elif st.inline - st.filled >= _DIRECT:
            return st.body[st.filled :]
        return None

    def _on_readable(self) -> None:
        for _ in range(64):  # then let other callbacks run
            if self.closed:
                return
            target = self._direct_target()
            direct = target is not None
            if target is None:
                if self._rpos == self._rend:
                    self._rpos = self._rend = 0
                elif self._rpos and len(self._rbuf) - self._rend < _DIRECT:
                    self._rbuf[: self._rend - self._rpos] = self._rbuf[self._rpos : self._rend]
                    self._rend -= self._rpos
                    self._rpos = 0
                target = self._rmv[self._rend :]
                assert target.nbytes, "a record that does not fit the read buffer"
            try:
                n, anc, flags, _ = self.sock.recvmsg_into([target], _ANCILLARY)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._fail(CommClosedError(f"in {self.label}: {type(e).__name__}: {e}"))
                return
            truncated = self._take_fds(anc) if anc else False
            if n == 0:
                self._eof()
                return
            if direct:
                st = self._in
                assert st is not None
                if st.ready:
                    st.filled += n
                else:
                    st.descs_filled += n
                    st.ready = st.descs_filled == len(st.descs)
            else:
                self._rend += n
            try:
                # What came before a bad fd is still the peer's message: deliver it first.
                self._parse()
            except CorruptSegmentError as e:
                self._fail(CommClosedError(f"in {self.label}: corrupt message from peer: {e}"))
                return
            except Exception as e:  # noqa: BLE001 - e.g. out of memory or fds while mapping
                self._fail(CommClosedError(f"in {self.label}: {type(e).__name__}: {e}"))
                return
            if truncated or flags & socket.MSG_CTRUNC:
                self._fail(
                    CommClosedError(
                        f"in {self.label}: control data truncated (MSG_CTRUNC): the peer sent "
                        "too many fds, or this process is out of file descriptors"
                    )
                )
                return
            if len(self._fds) > 2 * _MAX_SEGMENTS:
                self._fail(CommClosedError(f"in {self.label}: peer sent fds no message claims"))
                return
            if len(self._inbox) >= _PAUSE_MESSAGES:
                self._pause_reading()
                return

    def _take_fds(self, anc: list[tuple[int, int, bytes]]) -> bool:
        """Owns every received fd (closed on any error later); True if some were cut off."""
        truncated = False
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                whole = len(data) - len(data) % fds.itemsize
                fds.frombytes(data[:whole])
                self._fds.extend(fds)
                truncated |= whole != len(data)
        return truncated

    def _avail(self) -> int:
        return self._rend - self._rpos

    def _parse(self) -> None:
        while not self.closed:
            if self._release_count >= 0:
                if not self._parse_release():
                    return
                continue
            st = self._in
            if st is None:
                if self._avail() < _REC.size:
                    return
                kind, count, nseg, inline = _REC.unpack_from(self._rbuf, self._rpos)
                self._rpos += _REC.size
                if kind == _KIND_MESSAGE:
                    self._begin_message(count, nseg, inline)
                elif kind == _KIND_RELEASE:
                    if not 0 < count <= _MAX_RELEASE or nseg or inline:
                        raise CorruptSegmentError(f"bad release record ({count} ids)")
                    self._release_count = count
                else:
                    raise CorruptSegmentError(f"unknown record kind {kind}")
                continue
            if not st.ready:
                take = min(self._avail(), len(st.descs) - st.descs_filled)
                if take:
                    end = st.descs_filled + take
                    st.descs[st.descs_filled : end] = self._rmv[self._rpos : self._rpos + take]
                    st.descs_filled = end
                    self._rpos += take
                st.ready = st.descs_filled == len(st.descs)
                if not st.ready:
                    return
            if st.filled < st.inline:
                take = min(self._avail(), st.inline - st.filled)
                if take:
                    st.body[st.filled : st.filled + take] = self._rmv[
                        self._rpos : self._rpos + take
                    ]
                    st.filled += take
                    self._rpos += take
                if st.filled < st.inline:
                    return
            self._in = None
            self._deliver(self._finish_message(st))

    def _begin_message(self, count: int, nseg: int, inline: int) -> None:
        if count > _MAX_FRAMES or nseg > _MAX_SEGMENTS or inline > _MAX_INLINE:
            raise CorruptSegmentError(
                f"message out of range: {count} frames, {nseg} segments, {inline} inline bytes"
            )
        if len(self._fds) < nseg:
            raise CorruptSegmentError(
                f"message announces {nseg} memfds but {len(self._fds)} arrived"
            )
        fds = [self._fds.popleft() for _ in range(nseg)]
        self._in = _In(fds, inline, nseg * _SEG.size + count * _FRAME.size)

    def _finish_message(self, st: _In) -> list[memoryview]:
        nseg = len(st.fds)
        segs = [_SEG.unpack_from(st.descs, i * _SEG.size) for i in range(nseg)]
        views: list[memoryview] = []
        try:
            for i, (lend_id, nbytes) in enumerate(segs):
                fd = st.fds[i]
                st.fds[i] = -1
                if nbytes == 0:
                    os.close(fd)
                    raise CorruptSegmentError("empty segment")
                holder, key, m = _map_received(fd, nbytes)
                weakref.finalize(holder, _views_gone, self._self_ref, lend_id, key, m)
                views.append(holder.data)
                _stats["segment_bytes_received"] += nbytes
        finally:
            for fd in st.fds:
                if fd >= 0:
                    os.close(fd)
            st.fds = []
        frames: list[memoryview] = []
        pos = 0
        for nbytes, seg, offset in _FRAME.iter_unpack(st.descs[nseg * _SEG.size :]):
            if seg == _INLINE:
                if pos + nbytes > st.inline:
                    raise CorruptSegmentError("inline frames overrun the message")
                frames.append(st.body[pos : pos + nbytes])
                pos += nbytes
            else:
                if seg >= nseg or offset + nbytes > segs[seg][1]:
                    raise CorruptSegmentError("frame outside its segment")
                frames.append(views[seg][offset : offset + nbytes])
        if pos != st.inline:
            raise CorruptSegmentError(f"{st.inline - pos} inline bytes belong to no frame")
        _stats["inline_bytes_received"] += st.inline
        return frames

    def _parse_release(self) -> bool:
        need = self._release_count * _ID.size
        if self._avail() < need:
            return False
        ids = struct.unpack_from(f"<{self._release_count}Q", self._rbuf, self._rpos)
        self._rpos += need
        self._release_count = -1
        for lend_id in ids:
            seg = self._lent.pop(lend_id, None)
            if seg is None:
                raise CorruptSegmentError(f"peer released segment {lend_id} it does not hold")
            _stats["releases_received"] += 1
            _pool.returned(seg, self.budget)
        return True

    def _deliver(self, frames: list[memoryview]) -> None:
        w = self._waiter
        if w is not None and not w.done():
            self._waiter = None
            w.set_result(frames)
        else:
            self._inbox.append(frames)

    def _eof(self) -> None:
        self._shutdown(CommClosedError(f"in {self.label}: peer closed the connection"), True)

    async def read_frames(self) -> list[memoryview]:
        if self._inbox:
            frames = self._inbox.popleft()
            if not self.closed and len(self._inbox) < _PAUSE_MESSAGES:
                self._resume_reading()
            return frames
        if self.closed:
            raise self._closed_error()
        fut: asyncio.Future[list[memoryview]] = self.loop.create_future()
        self._waiter = fut
        try:
            return await fut
        finally:
            if self._waiter is fut:
                self._waiter = None

    def _closed_error(self) -> CommClosedError:
        if isinstance(self.error, CommClosedError):
            return CommClosedError(*self.error.args)
        return CommClosedError(f"in {self.label}: closed")

    # ---- writing

    def _plan(
        self, frames: Sequence[memoryview]
    ) -> tuple[list[list[tuple[int, int]]], list[int], list[int]]:
        """Which frames go into which segment (index, offset), the segments' sizes, and which
        frames travel inline."""
        large = [i for i, f in enumerate(frames) if f.nbytes >= self.min_frame]
        small = [i for i, f in enumerate(frames) if 0 < f.nbytes < self.min_frame]
        solo = large[: _MAX_SEGMENTS - 1]  # the last one is shared by what is left
        shared = large[len(solo) :]
        inline: list[int] = []
        total = 0
        for i in small:
            total += frames[i].nbytes
            (inline if total <= _INLINE_SOFT else shared).append(i)
        plan = [[(i, 0)] for i in solo]
        sizes = [frames[i].nbytes for i in solo]
        if shared:
            shared.sort()
            group, off = [], 0
            for i in shared:
                off = -(-off // 64) * 64  # aligned for any dtype
                group.append((i, off))
                off += frames[i].nbytes
            plan.append(group)
            sizes.append(off)
        return plan, sizes, inline

    def _fill(
        self, frames: Sequence[memoryview], plan: list[list[tuple[int, int]]], sizes: list[int]
    ) -> list[_Segment]:
        segs: list[_Segment] = []
        try:
            for group, size in zip(plan, sizes, strict=True):
                seg = _pool.take(size)
                segs.append(seg)
                for i, off in group:
                    seg.fill(off, frames[i])
        except BaseException:
            for s in segs:
                _pool.returned(s, self.budget, was_lent=False)
            raise
        return segs

    async def write_frames(self, raw: Sequence[Any]) -> int:
        if self.closed:
            raise self._closed_error()
        frames = [ensure_memoryview(f) for f in raw]
        sizes = [f.nbytes for f in frames]
        total = sum(sizes)
        if max(sizes, default=0) < self.min_frame and total <= _INLINE_SOFT:
            # Small messages, the common case: everything inline, one sendmsg.
            head = _REC.pack(_KIND_MESSAGE, len(frames), 0, total) + b"".join(
                [_FRAME.pack(n, _INLINE, 0) for n in sizes]
            )
            entry = _Out([memoryview(head), *(f for f in frames if f.nbytes)], [], [])
            _stats["inline_bytes_sent"] += total
        else:
            entry = await self._segment_message(frames)
        self._out.append(entry)
        self._flush()
        if entry.bufs:  # not all written yet
            if self.closed:
                raise self._closed_error()
            entry.future = self.loop.create_future()
            await entry.future
        return total

    async def _segment_message(self, frames: list[memoryview]) -> _Out:
        plan, sizes, _ = self._plan(frames)
        if sum(sizes) >= OFFLOAD_THRESHOLD:
            segs = await offload(self._fill, frames, plan, sizes)
        else:
            segs = self._fill(frames, plan, sizes)
        if self.closed:
            for s in segs:
                _pool.returned(s, self.budget, was_lent=False)
            raise self._closed_error()
        where: dict[int, tuple[int, int]] = {}
        for k, group in enumerate(plan):
            for i, off in group:
                where[i] = (k, off)
        lends = [(next(_lend_ids), s) for s in segs]
        descs = [_SEG.pack(lend_id, size) for (lend_id, _), size in zip(lends, sizes, strict=True)]
        bufs: list[memoryview] = []
        inline_bytes = 0
        for i, f in enumerate(frames):
            if i in where:
                k, off = where[i]
                descs.append(_FRAME.pack(f.nbytes, k, off))
            else:
                descs.append(_FRAME.pack(f.nbytes, _INLINE, 0))
                if f.nbytes:
                    bufs.append(f)
                    inline_bytes += f.nbytes
        head = _REC.pack(_KIND_MESSAGE, len(frames), len(segs), inline_bytes) + b"".join(descs)
        _stats["segment_frames_sent"] += len(where)
        _stats["segment_bytes_sent"] += sum(frames[i].nbytes for i in where)
        _stats["inline_bytes_sent"] += inline_bytes
        return _Out([memoryview(head), *bufs], [s.fd for s in segs], lends)

    def release_later(self, lend_id: int) -> None:
        """Queues a RELEASE for the peer; callable from any thread."""
        with self._release_lock:
            self._releases.append(lend_id)
            if self._release_scheduled:
                return
            self._release_scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._send_releases)
        except RuntimeError:
            pass  # the loop is gone, and the connection with it

    def _send_releases(self) -> None:
        with self._release_lock:
            ids, self._releases = self._releases, []
            self._release_scheduled = False
        if self.closed or not ids:
            return
        for i in range(0, len(ids), _MAX_RELEASE):
            chunk = ids[i : i + _MAX_RELEASE]
            rec = _REC.pack(_KIND_RELEASE, len(chunk), 0, 0) + struct.pack(
                f"<{len(chunk)}Q", *chunk
            )
            self._out.append(_Out([memoryview(rec)], [], []))
        self._flush()

    def _flush(self) -> None:
        while self._out and not self.closed:
            e = self._out[0]
            anc = []
            if e.fds and not e.sent_fds:
                anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", e.fds))]
            try:
                n = self.sock.sendmsg(e.bufs[e.pos : e.pos + _IOV], anc)
            except (BlockingIOError, InterruptedError):
                self._want_write(True)
                return
            except OSError as err:
                self._fail(CommClosedError(f"in {self.label}: {type(err).__name__}: {err}"))
                return
            if anc:
                # The fds are in the peer's queue now: the segments are the peer's until it
                # lends them back (or the connection ends).
                e.sent_fds = True
                for lend_id, seg in e.segs:
                    self._lent[lend_id] = seg
                    _pool.lent(seg, self.budget)
            while n:
                b = e.bufs[e.pos]
                if n >= b.nbytes:
                    n -= b.nbytes
                    e.pos += 1
                else:
                    e.bufs[e.pos] = b[n:]
                    n = 0
            if e.pos == len(e.bufs):
                self._out.popleft()
                e.bufs = []
                if e.future is not None and not e.future.done():
                    e.future.set_result(None)
        self._want_write(False)

    def _want_write(self, on: bool) -> None:
        if on and not self._writing and not self.closed:
            self.loop.add_writer(self.fd, self._flush)
            self._writing = True
        elif not on and self._writing:
            self.loop.remove_writer(self.fd)
            self._writing = False

    async def drain(self, timeout: float) -> None:
        if self._out and not self.closed:
            last = self._out[-1]
            if last.future is None:
                last.future = self.loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(last.future), timeout)
            except (asyncio.TimeoutError, CommClosedError):
                pass

    # ---- closing

    def _fail(self, error: BaseException) -> None:
        self._shutdown(error, False)

    def abort(self) -> None:
        """Closes now; callable from any thread (a finalizer may run anywhere)."""
        if self.closed:
            return
        if threading.get_ident() != self.thread:
            try:
                self.loop.call_soon_threadsafe(self.abort)
                return
            except RuntimeError:
                pass  # loop closed: nothing is registered on it any more
        self._shutdown(CommClosedError(f"in {self.label}: aborted"), False)

    def _shutdown(self, error: BaseException, keep_inbox: bool) -> None:
        if self.closed:
            return
        self.closed = True
        self.error = error
        try:
            if self._reading:
                self.loop.remove_reader(self.fd)
            if self._writing:
                self.loop.remove_writer(self.fd)
        except RuntimeError:
            pass  # loop already closed
        self._reading = self._writing = False
        try:
            self.sock.close()
        except OSError:
            pass
        while self._fds:
            os.close(self._fds.popleft())
        if self._in is not None:
            for fd in self._in.fds:
                if fd >= 0:
                    os.close(fd)
            self._in = None
        for seg in self._lent.values():
            _pool.orphaned(seg)
        self._lent.clear()
        while self._out:
            e = self._out.popleft()
            if not e.sent_fds:  # else they are in _lent, orphaned above
                for _, seg in e.segs:
                    _pool.returned(seg, self.budget, was_lent=False)
            if e.future is not None and not e.future.done():
                e.future.set_exception(self._closed_error())
                e.future.exception()  # retrieved: nobody may be waiting any more
        if not keep_inbox:
            self._inbox.clear()
        w = self._waiter
        if w is not None and not w.done():
            self._waiter = None
            w.set_exception(self._closed_error())

    async def close(self, timeout: float) -> None:
        if self.closed:
            return
        await self.drain(timeout)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._shutdown(CommClosedError(f"in {self.label}: closed"), False)


_lend_ids = itertools.count(1)


# ---------------------------------------------------------------------------------------------
# comms


class ShmComm(Comm):
    """A comm over a Unix socket to a process on the same host: large frames as memfds."""

    def __init__(
        self, channel: _Channel, local_addr: str, peer_addr: str, deserialize: bool = True
    ) -> None:
        self._channel = channel
        super().__init__(deserialize=deserialize)
        self._local_addr = local_addr
        self._peer_addr = peer_addr
        channel.label = f"ShmComm local={local_addr} remote={peer_addr}"
        self._finalizer = weakref.finalize(self, channel.abort)
        self._finalizer.atexit = False
        _stats["unix_comms"] += 1

    @property
    def local_address(self) -> str:
        return self._local_addr

    @property
    def peer_address(self) -> str:
        return self._peer_addr

    @property
    def same_host(self) -> bool:
        return True

    async def read(self, deserializers: Any = None) -> Any:
        try:
            frames = await self._channel.read_frames()
        except CommClosedError:
            raise
        except BaseException:
            # Cancelled or interrupted mid-read: what was consumed is unknown, as in TCP.
            self.abort()
            raise
        try:
            return await from_frames(
                frames,
                deserialize=self.deserialize,
                deserializers=deserializers,
                allow_offload=self.allow_offload,
            )
        except EOFError:
            self.abort()
            raise CommClosedError("aborted stream on truncated data") from None

    async def write(self, msg: Any, serializers: Any = None, on_error: str = "message") -> int:
        if self._channel.closed:
            raise self._channel._closed_error()
        frames = await to_frames(
            msg,
            allow_offload=self.allow_offload,
            serializers=serializers,
            on_error=on_error,
            context={
                "sender": self.local_info,
                "recipient": self.remote_info,
                **self.handshake_options,
            },
            frame_split_size=_NO_SPLIT,
        )
        try:
            return await self._channel.write_frames(frames)
        except CommClosedError:
            raise
        except BaseException:
            self.abort()
            raise

    async def close(self) -> None:
        self._finalizer.detach()
        await self._channel.close(_connect_timeout())

    def abort(self) -> None:
        self._finalizer.detach()
        self._channel.abort()

    def closed(self) -> bool:
        return self._channel.closed


class ShmTCP(TCP):
    """distributed's TCP comm under ``shm://`` addresses, for peers on other hosts."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _stats["tcp_comms"] += 1

    async def write(self, msg: Any, serializers: Any = None, on_error: str = "message") -> int:
        n = int(await super().write(msg, serializers, on_error))
        _stats["tcp_bytes_sent"] += n
        return n


async def _recv_exact(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = await loop.sock_recv_into(sock, view[got:])
        if k == 0:
            raise ConnectionError("peer closed the connection during the shm:// handshake")
        got += k
    return bytes(buf)


def _autobind_id(name: bytes | str) -> int:
    """The number in a kernel-chosen abstract name (5 hex digits): a Unix end's "port"."""
    raw = name.encode() if isinstance(name, str) else name
    if len(raw) != 6 or raw[:1] != b"\0":
        raise ValueError(f"not an autobound Unix socket name: {raw!r}")
    return int(raw[1:], 16)


def _hello(dialed: str, local: str) -> bytes:
    boot, netns = _host_identity()
    d, lo = dialed.encode(), local.encode()
    return _HELLO.pack(_MAGIC, _VERSION, boot, netns, len(d), len(lo)) + d + lo


class ShmConnector(TCPConnector):
    """Connects over the Unix socket when the listener is on this host, else over TCP."""

    prefix = PREFIX
    comm_class = ShmTCP
    encrypted = False

    async def connect(self, address: str, deserialize: bool = True, **connection_args: Any) -> Comm:
        self._check_encryption(address, connection_args)
        host, port = parse_host_port(address)
        sock = await self._connect_unix(host, port)
        if sock is None:
            return await super().connect(address, deserialize, **connection_args)  # type: ignore[no-any-return]
        loop = asyncio.get_running_loop()
        local = unparse_host_port(host, _autobind_id(sock.getsockname()))
        try:
            welcome = await asyncio.wait_for(
                self._handshake(loop, sock, address, local), _connect_timeout()
            )
        except BaseException:
            sock.close()
            raise
        if not welcome:
            sock.close()
            logger.debug("shm:// listener at %s refused the Unix handshake; using TCP", address)
            return await super().connect(address, deserialize, **connection_args)  # type: ignore[no-any-return]
        return ShmComm(_Channel(sock, loop), PREFIX + local, PREFIX + address, deserialize)

    @staticmethod
    async def _handshake(
        loop: asyncio.AbstractEventLoop, sock: socket.socket, dialed: str, local: str
    ) -> bool:
        await loop.sock_sendall(sock, _hello(dialed, local))
        magic, version, boot, netns, status = _WELCOME.unpack(
            await _recv_exact(loop, sock, _WELCOME.size)
        )
        return (
            magic == _MAGIC
            and version == _VERSION
            and status == 0
            and (boot, netns) == _host_identity()
        )

    @staticmethod
    async def _connect_unix(host: str, port: int) -> socket.socket | None:
        loop = asyncio.get_running_loop()
        try:
            ips = [ipaddress.ip_address(host).compressed]
        except ValueError:
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError:
                return None  # TCP will report the name error
            ips = list(dict.fromkeys(str(info[4][0]) for info in infos))
        names = [_unix_name(ip, port) for ip in ips]
        # A listener on every interface answers for each local address only: never for an
        # address that TCP would route to another host.
        if any(_is_local_ip(ip) for ip in ips):
            names.append(_unix_name("", port))
        for name in names:
            sock = socket.socket(
                socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
            )
            try:
                sock.bind("")  # autobind: the kernel's name for this end is our local port
                await loop.sock_connect(sock, name)
            except (ConnectionRefusedError, FileNotFoundError):
                sock.close()
                continue
            except BaseException:
                sock.close()
                raise
            return sock
        return None


class ShmListener(TCPListener):
    """Listens on TCP (peers on other hosts) and on abstract Unix sockets named from the
    bound addresses (peers on this host)."""

    prefix = PREFIX
    comm_class = ShmTCP
    encrypted = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unix: list[socket.socket] = []
        self._names: list[str] = []  # host keys of the Unix sockets
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        # The Unix sockets are bound before TCP listens: a connector that finds no Unix socket
        # and then reaches the TCP port must be talking to a listener without one (a tcp://
        # listener), never to a shm:// listener between its two binds.
        loop = self._loop = asyncio.get_running_loop()
        keys = _name_keys(self.ip)
        for _ in range(5):
            port = self.port or _free_port(self.ip)
            try:
                self._bind_unix(keys, port)
            except OSError as e:
                if self.port or e.errno != errno.EADDRINUSE:
                    raise
                continue  # an ephemeral port whose name is taken: pick another
            wanted, self.port = self.port, port
            try:
                await super().start()
            except OSError as e:
                self._close_unix()
                self.port = wanted
                if wanted or e.errno != errno.EADDRINUSE:
                    raise
                continue  # someone bound the port meanwhile
            break
        else:
            raise OSError(errno.EADDRINUSE, "shm:// listener: no free port found")
        try:
            if "*" not in keys:  # a hostname may have resolved otherwise for TCP: name those too
                bound = {_host_key(str(a[0])) for a in get_tcp_server_addresses(self.tcp_server)}
                self._bind_unix(sorted(bound - set(keys)), port)
            for sock in self._unix:
                loop.add_reader(sock.fileno(), self._accept, sock, loop)
        except BaseException:
            self.stop()
            raise

    def _bind_unix(self, keys: list[str], port: int) -> None:
        backlog = int(dask.config.get("distributed.comm.socket-backlog"))
        try:
            for key in keys:
                name = _UNIX_NAME.format(host=key, port=port)
                sock = socket.socket(
                    socket.AF_UNIX,
                    socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                )
                try:
                    sock.bind(name)
                except OSError as e:
                    sock.close()
                    raise OSError(
                        e.errno,
                        f"shm:// listener: the Unix socket {name[1:]!r} is taken by another "
                        f"process ({e.strerror})",
                    ) from None
                self._unix.append(sock)
                self._names.append(key)
                sock.listen(backlog)
        except BaseException:
            self._close_unix()
            raise

    def _close_unix(self) -> None:
        unix, self._unix, self._names = self._unix, [], []
        for sock in unix:
            if self._loop is not None:
                try:
                    self._loop.remove_reader(sock.fileno())
                except RuntimeError:
                    pass  # loop closed
            sock.close()

    def stop(self) -> None:
        super().stop()
        self._close_unix()

    def _accept(self, lsock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        for _ in range(64):
            try:
                conn, _ = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                logger.warning("shm:// listener %s: accept failed: %s", self.contact_address, e)
                return
            conn.setblocking(False)
            task = loop.create_task(self._handle_unix(conn, loop))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handle_unix(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        try:
            addrs = await asyncio.wait_for(self._handshake(sock, loop), _connect_timeout())
        except (OSError, asyncio.TimeoutError, ValueError) as e:  # struct/Unicode errors too
            sock.close()
            logger.debug("shm:// listener %s: Unix handshake failed: %s", self.contact_address, e)
            return
        except BaseException:
            sock.close()
            raise
        if addrs is None:
            sock.close()
            return
        if self.tcp_server is None:
            # stop() ran meanwhile: a dangling connection would leave the peer waiting.
            sock.close()
            return
        local, peer = addrs
        comm = ShmComm(_Channel(sock, loop), local, peer, self.deserialize)
        comm.allow_offload = self.allow_offload
        try:
            await self.on_connection(comm)
        except CommClosedError:
            logger.info("Connection from %s closed before handshake completed", peer)
            return
        await self.comm_handler(comm)

    async def _handshake(
        self, sock: socket.socket, loop: asyncio.AbstractEventLoop
    ) -> tuple[str, str] | None:
        magic, version, boot, netns, nd, nl = _HELLO.unpack(
            await _recv_exact(loop, sock, _HELLO.size)
        )
        if magic != _MAGIC or nd > _MAX_NAME or nl > _MAX_NAME:
            return None  # not our protocol: close without an answer
        names = await _recv_exact(loop, sock, nd + nl)
        dialed, local = names[:nd].decode(), names[nd:].decode()
        status = 0
        if version != _VERSION:
            status = 1
        elif (boot, netns) != _host_identity():
            status = 2
        else:
            try:
                _, port = parse_host_port(dialed)
                _, peer_port = parse_host_port(local)
                if port != self.get_host_port()[1] or peer_port != _autobind_id(sock.getpeername()):
                    status = 3
            except ValueError:
                status = 3
        my_boot, my_netns = _host_identity()
        await loop.sock_sendall(sock, _WELCOME.pack(_MAGIC, _VERSION, my_boot, my_netns, status))
        if status:
            return None
        return PREFIX + dialed, PREFIX + local


class ShmBackend(BaseTCPBackend):
    """The ``shm`` scheme: address handling as TCP, transport chosen per peer."""

    _connector_class = ShmConnector
    _listener_class = ShmListener

    def __init__(self) -> None:
        super().__init__()
        _raise_fd_limit()
