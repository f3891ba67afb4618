"""Child-process bodies for test_buffer.py (importable, for the spawn start method)."""

from __future__ import annotations

import socket
import sys
from typing import Any

import numpy as np

import shmipc


def echo_arrays(fd: int, count: int) -> None:
    """Receives `count` arrays, adds 1 in place, sends each back (zero copy)."""
    sock = socket.socket(fileno=fd)
    for _ in range(count):
        arr = shmipc.recv_array(sock, timeout=30)
        arr += 1
        shmipc.send_array(sock, arr)
        del arr
    sock.close()


def recv_and_report(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    buf = shmipc.recv(sock, timeout=30)
    view = memoryview(buf)
    data = bytes(view[:4])
    view[0] = 99  # the receiver may write
    del view
    sock.sendall(data + repr(buf.meta).encode())
    sock.close()


def block_in_recv_until_interrupted(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    sock.sendall(b"r")
    try:
        shmipc.recv(sock)  # no timeout: only Ctrl-C ends this
    except KeyboardInterrupt:
        sys.exit(42)
    sys.exit(1)


def check_and_write(buf: Any, expected: int) -> None:
    """Gets a Buffer as a Process argument; checks its bytes and writes a marker."""
    view = memoryview(buf)
    ok = all(b == expected for b in view[:16]) and buf.meta == {"from": "parent"}
    view[0] = 200
    del view
    sys.exit(0 if ok else 3)


def get_from_queue_and_write(q: Any, done: Any) -> None:
    buf = q.get(timeout=30)
    with memoryview(buf) as view:
        view[1] = view[0] + 1
    done.put(bytes(memoryview(buf)[:2]))


def get_from_pipe_and_write(conn: Any) -> None:
    buf = conn.recv()
    arr = buf.as_array(np.int64)
    arr *= 2
    del arr
    conn.send("ok")
