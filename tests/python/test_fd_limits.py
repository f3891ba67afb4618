"""Running out of file descriptors (API.md §7): OSError(EMFILE) with nothing lost, the buffer pool
never hoards fds, and garbage or the wrong kind of socket fails at once."""

from __future__ import annotations

import errno
import fcntl
import multiprocessing as mp
import os
import socket
import struct

import numpy as np
import pytest

import shmipc

import workers_limits as w
from testutil import join_all


def test_a_receiver_at_its_fd_limit_gets_emfile_and_loses_no_buffer(
    spawn: mp.context.SpawnContext,
) -> None:
    a, b = socket.socketpair()
    q = spawn.Queue()
    p = spawn.Process(target=w.recv_at_the_fd_limit, args=(b, 50, q))
    p.start()
    b.close()
    for i in range(50):
        buf = shmipc.Buffer.from_bytes(i.to_bytes(8, "little"))
        shmipc.send(a, buf)
    errors, got = q.get(timeout=120)
    join_all([p])
    a.close()
    assert errno.EMFILE in errors, "the receive at the limit must fail with EMFILE"
    assert got == [i.to_bytes(8, "little") for i in range(50)], "every buffer still arrived"


@pytest.mark.parametrize("lower_later", [False, True], ids=["from_the_start", "lowered_later"])
def test_the_buffer_pool_keeps_few_fds_under_a_low_fd_limit(
    spawn: mp.context.SpawnContext, lower_later: bool
) -> None:
    q = spawn.Queue()
    p = spawn.Process(target=w.pool_under_a_low_fd_limit, args=(q, lower_later))
    p.start()
    idle, opened = q.get(timeout=120)
    join_all([p])
    assert idle <= 256 // 16
    assert opened == 200, f"only {opened} files could be opened: the pool hoards fds"


def test_recv_on_a_tcp_socket_is_refused_without_consuming_its_bytes() -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    c = socket.create_connection(srv.getsockname())
    s, _ = srv.accept()
    c.sendall(b"hello")
    with pytest.raises(ValueError, match="AF_UNIX"):
        shmipc.recv(s, timeout=5)
    s.settimeout(5)
    assert s.recv(5) == b"hello", "the bytes are still there for their real reader"
    for x in (c, s, srv):
        x.close()


def test_three_bytes_that_cannot_start_a_header_fail_at_once() -> None:
    a, b = socket.socketpair()
    a.sendall(b"GET")  # a live peer that will send nothing more
    with pytest.raises(shmipc.CorruptSegmentError):
        shmipc.recv(b, timeout=30)  # never waits for the rest of a header that cannot be
    a.close()
    b.close()


def test_a_huge_sparse_memfd_announcing_16_bytes_maps_only_what_was_announced() -> None:
    a, b = socket.socketpair()
    hdr_fd = os.memfd_create("sparse", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(hdr_fd, 1 << 40)  # 1 TiB, sparse
    fcntl.fcntl(hdr_fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
    header = struct.pack("<IHHQIIQ", 0x46424D53, 1, 0, 16, 0, 0, 0)
    received = []
    for _ in range(200):  # 200 TiB of address space if whole files were mapped
        a.sendmsg([header], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, np.array([hdr_fd], "i"))])
        received.append(shmipc.recv(b, timeout=10))
    assert all(r.nbytes == 16 for r in received)
    for r in received:
        r.close()
    os.close(hdr_fd)
    a.close()
    b.close()
