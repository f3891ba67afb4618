"""A process exits cleanly while daemon threads are blocked inside shmipc calls.

CPython ends such threads when they try to take the GIL during finalization (pthread_exit);
unwinding that through C++ used to abort the whole process ("terminate called without an
active exception"). Blocked threads now park until the process is gone.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import shmipc

PROLOGUE = """
import os, socket, threading, time
import shmipc
"""

BLOCKED = {
    "channel recv": (
        "h = shmipc.Heap.anonymous(1 << 20); ch = h.channel('x'); f = lambda: ch.recv()"
    ),
    "channel send on a full ring": (
        "h = shmipc.Heap.anonymous(1 << 20); ch = h.channel('x', capacity=1); ch.send(b'a');"
        " f = lambda: ch.send(b'b')"
    ),
    "queue get": (
        "q = shmipc.MessageQueue.create(NAME, maxsize=2, max_message_size=64); f = lambda: q.get()"
    ),
    "fd recv": "a, b = socket.socketpair(); f = lambda: shmipc.recv(a)",
    "value wait": "v = shmipc.SharedValue.create(NAME, size=64); f = lambda: v.wait()",
}


@pytest.mark.parametrize("what", sorted(BLOCKED))
def test_exit_with_a_daemon_thread_blocked_in_a_shmipc_call_is_clean(what: str, name: str) -> None:
    code = (
        PROLOGUE
        + f"NAME = {name!r}\n"
        + BLOCKED[what]
        + "\nt = threading.Thread(target=f, daemon=True); t.start(); time.sleep(0.3)\n"
        + "print('bye', flush=True)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert r.stdout.strip() == "bye"
    assert "terminate called" not in r.stderr
    # An owner whose handle a parked thread still holds leaves its name stale (as a crash
    # would): the next create replaces it; remove it here.
    if os.path.exists(f"/dev/shm/{name}"):
        shmipc.unlink(name)
