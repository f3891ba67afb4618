"""Workers for test_fd_limits.py: receivers that run at their fd limit."""

from __future__ import annotations

import os
import resource
import socket
from typing import Any

import shmipc


def recv_at_the_fd_limit(sock: socket.socket, count: int, q: Any) -> None:
    """Fills every free fd slot, tries to receive (EMFILE expected, nothing lost), then frees the
    slots and receives all `count` buffers; reports what it saw. (`sock` travels by fd:
    multiprocessing pickles sockets with DupFd.)"""
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
    hogs = []
    try:
        while True:
            hogs.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    errors = []
    try:
        shmipc.recv(sock, timeout=10)
    except OSError as e:
        errors.append(e.errno)
    for h in hogs:
        os.close(h)
    got = []
    for _ in range(count):
        buf = shmipc.recv(sock, timeout=30)
        got.append(bytes(memoryview(buf)[:8]))
        buf.close()
    q.put((errors, got))
    sock.close()


def pool_under_a_low_fd_limit(q: Any, lower_later: bool = False) -> None:
    """Creates and closes many buffers under RLIMIT_NOFILE=256, then opens files as a user
    would: the pool's idle fds must not be what makes open() fail. With `lower_later`, the
    pool first fills under the usual limit, and the limit is lowered afterwards."""
    if lower_later:
        for i in range(200):
            shmipc.Buffer(4096 * (1 + i % 50)).close()
        assert shmipc.pool_stats()["entries"] > 16
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    for i in range(300):
        b = shmipc.Buffer(4096 * (1 + i % 50))
        b.close()
    idle = shmipc.pool_stats()["entries"]
    opened = []
    try:
        while len(opened) < 200:
            opened.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    n = len(opened)
    for f in opened:
        os.close(f)
    q.put((idle, n))
