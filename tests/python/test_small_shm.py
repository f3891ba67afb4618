"""A small /dev/shm (Docker's 64 MiB): objects that don't fit fail at creation, never SIGBUS.

Runs a child in a private mount namespace with a 64 MiB tmpfs on /dev/shm (unshare, when
permitted; skipped with the reason otherwise).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, os, sys
import numpy as np
import shmipc

results = {}

def attempt(label, fn):
    try:
        fn()
        results[label] = "ok"
    except MemoryError as e:
        results[label] = "MemoryError: " + str(e)
    except OSError as e:
        results[label] = f"OSError({e.errno}): {e}"

attempt("heap 128 MiB", lambda: shmipc.Heap.create("big-heap", size=128 << 20))
h = shmipc.Heap.create("small-heap", size=32 << 20)
attempt("second heap 40 MiB", lambda: shmipc.Heap.create("heap-2", size=40 << 20))
attempt("value 100 MiB", lambda: shmipc.SharedValue.create("big-value", size=100 << 20))
attempt("queue 1 GiB", lambda: shmipc.MessageQueue.create("big-q", maxsize=1024,
                                                          max_message_size=1 << 20))

# A growing heap meets the full tmpfs: MemoryError, and it stays usable.
g = shmipc.Heap.create("grow-heap", size=4 << 20, max_size=1 << 30)
blocks = []
def fill():
    while True:
        blocks.append(g.allocate(1 << 20))
attempt("heap growth", fill)
results["heap growth blocks"] = len(blocks)
small = g.allocate(64)
memoryview(small)[:1] = b"x"
results["heap usable after"] = "ok"

# A stream that outgrows the tmpfs: ENOSPC from write, never SIGBUS.
def big_stream():
    with shmipc.open_stream("big-stream", "w+b", owner=True) as f:
        chunk = b"x" * (1 << 20)
        for _ in range(100):
            f.write(chunk)
        f.flush()
attempt("stream 100 MiB", big_stream)

# memfd-backed buffers don't live in /dev/shm: they are limited by memory, not by its size.
attempt("Buffer 100 MiB (memfd)", lambda: shmipc.Buffer(100 << 20))
print(json.dumps(results))
"""


def _run_in_small_shm() -> subprocess.CompletedProcess[str]:
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot create a mount namespace here: {probe.stderr.strip()}")
    shell = 'mount -t tmpfs -o size=64m tmpfs /dev/shm && exec "$0" -c "$1"'
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", shell, sys.executable, SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_objects_that_do_not_fit_a_64_mib_dev_shm_fail_at_creation_never_sigbus() -> None:
    r = _run_in_small_shm()
    assert r.returncode != -signal.SIGBUS, "SIGBUS: shared memory was not reserved"
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["heap 128 MiB"].startswith("MemoryError"), res
    assert res["second heap 40 MiB"].startswith("MemoryError"), res
    assert res["value 100 MiB"].startswith("MemoryError"), res
    assert res["queue 1 GiB"].startswith("MemoryError"), res
    assert res["heap growth"].startswith("MemoryError"), res
    assert 10 < res["heap growth blocks"] < 64, res
    assert res["heap usable after"] == "ok"
    assert res["stream 100 MiB"].startswith("OSError(28)"), res
    assert res["Buffer 100 MiB (memfd)"] == "ok", res
    # The messages say what was asked and what is available.
    assert "bytes" in res["heap 128 MiB"]
