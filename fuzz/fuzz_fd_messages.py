"""Fuzz the receiving side of fd passing with malformed messages (atheris).

Each input picks a socket type, which descriptors ride along (none, a good sealed memfd, an
unsealed memfd, a too-small memfd, a pipe, several), and the bytes of the message, optionally
behind a valid header whose fields are then mutated. `recv`/`recv_array` must answer with one
of the documented exceptions, never crash, and never leak a descriptor.

    python fuzz/fuzz_fd_messages.py -runs=20000          # smoke run (CI)
    python fuzz/fuzz_fd_messages.py -max_total_time=600  # longer
"""

from __future__ import annotations

import os
import socket
import struct
import sys

import atheris

import shmipc

# coverage feedback from the Python layer (the C++ core is not instrumented)
atheris.instrument_all()

EXPECTED = (shmipc.CorruptSegmentError, EOFError, TimeoutError, BufferError, ValueError, OSError)
SOCK_TYPES = [socket.SOCK_STREAM, socket.SOCK_SEQPACKET, socket.SOCK_DGRAM]
HEADER = struct.Struct("<IHHQIIQ")
MAGIC = 0x46424D53

_good = shmipc.Buffer(4096)  # a valid sealed memfd, reused by many inputs
_baseline_fds: int | None = None
_iterations = 0


def _fds(kind: int, keep: list[int]) -> list[int]:
    """Descriptors to attach; the ones we create are appended to `keep` (closed afterwards)."""
    if kind == 0:
        return []
    if kind == 1:
        return [_good.fileno()]
    if kind == 2:
        fd = os.memfd_create("fuzz", os.MFD_CLOEXEC)
        os.ftruncate(fd, 4096)
        keep.append(fd)
        return [fd]
    if kind == 3:
        r, w = os.pipe()
        keep += [r, w]
        return [r]
    if kind == 4:
        return [_good.fileno()] * 2
    return [_good.fileno()] * (3 + kind % 7)


def one_input(data: bytes) -> None:
    global _baseline_fds, _iterations
    fdp = atheris.FuzzedDataProvider(data)
    sock_type = SOCK_TYPES[fdp.ConsumeIntInRange(0, 2)]
    fd_kind = fdp.ConsumeIntInRange(0, 8)
    with_header = fdp.ConsumeBool()
    as_array = fdp.ConsumeBool()
    body = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 512))
    if with_header:
        nbytes = fdp.ConsumeIntInRange(0, 1 << 14)
        meta_len = (
            fdp.ConsumeIntInRange(0, min(len(body), 200))
            if fdp.ConsumeBool()
            else (fdp.ConsumeIntInRange(0, 1 << 32 - 1))
        )
        desc_len = (
            max(0, len(body) - meta_len) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 1 << 20)
        )
        payload = HEADER.pack(MAGIC, 1, 0, nbytes, meta_len, desc_len, 0) + body
    else:
        payload = body or b"\0"
    keep: list[int] = []
    a, b = socket.socketpair(socket.AF_UNIX, sock_type)
    try:
        try:
            socket.send_fds(a, [payload], _fds(fd_kind, keep))
        except OSError:
            return  # e.g. a datagram larger than the socket allows: nothing to receive
        if fdp.ConsumeBool():
            a.close()
        try:
            if as_array:
                arr = shmipc.recv_array(b, timeout=0)
                _ = arr.shape, bytes(arr.tobytes()[:16])
            else:
                buf = shmipc.recv(b, timeout=0)
                _ = bytes(memoryview(buf)[:16]), buf.meta
                buf.close()
        except EXPECTED:
            pass
    finally:
        a.close()
        b.close()
        for fd in keep:
            os.close(fd)
    _iterations += 1
    if _iterations % 1000 == 0:
        shmipc._core.clear_pool()
        n = len(os.listdir("/proc/self/fd"))
        if _baseline_fds is None:
            _baseline_fds = n
        elif n > _baseline_fds + 8:
            raise RuntimeError(f"fd leak: {n} open, {_baseline_fds} at start")


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
