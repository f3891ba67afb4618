"""Foreign owners (issue 10 item 2, API.md §7): an object another user created under the name
we expect is refused unless we say whom we trust. The other user is real: a forked child that
drops to uid/gid 65534 (nobody) creates the objects, so these tests need root."""

from __future__ import annotations

import os
import pickle
import time
from typing import Any

import pytest

import shmipc

NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")


class _Payload:
    """Unpickling it writes a marker file: proof that foreign data was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (open, (self.path, "w"))


def _as_nobody(make: Any) -> None:
    """Runs `make()` in a forked child that became uid/gid 65534; waits for it (bounded)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            make()
            code = 0
        except BaseException as e:  # report, never return into pytest in the child
            os.write(2, f"child failed: {e!r}\n".encode())
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        assert time.monotonic() < deadline, "the other user's child did not finish"
        time.sleep(0.01)
    assert os.waitstatus_to_exitcode(status) == 0


def _owner(name: str) -> int:
    return os.stat("/dev/shm/" + name.lstrip("/")).st_uid


def test_a_queue_planted_by_another_user_is_refused_and_never_unpickled(
    name: str, tmp_path: Any
) -> None:
    marker = str(tmp_path / "ran")

    def plant() -> None:
        q = shmipc.MessageQueue.create(name, mode=0o666, persistent=True)
        q.put_bytes(pickle.dumps(_Payload(marker)))
        q.close()

    _as_nobody(plant)
    assert _owner(name) == NOBODY
    with pytest.raises(PermissionError) as ei:
        shmipc.MessageQueue.attach(name)
    assert "trust_owner" in str(ei.value) and str(NOBODY) in str(ei.value)
    assert not os.path.exists(marker)
    # Trusting that user explicitly opens it (and then get() unpickles, as asked).
    with shmipc.MessageQueue.attach(name, trust_owner=NOBODY) as q:
        assert q.qsize() == 1
        assert q.get_bytes(timeout=5)
    shmipc.unlink(name)


@pytest.mark.parametrize("kind", ["heap", "value", "stream"])
def test_other_kinds_of_another_user_need_trust_owner(name: str, kind: str) -> None:
    def plant() -> None:
        if kind == "heap":
            h = shmipc.Heap.create(name, 1 << 20, mode=0o666, persistent=True)
            h.close()
        elif kind == "value":
            v = shmipc.SharedValue.create(name, 64, mode=0o666, persistent=True)
            v.write(b"theirs")
            v.close()
        else:
            with shmipc.open_stream(name, "wb", owner=True, mode=0o666, persistent=True) as f:
                f.write(b"theirs")

    _as_nobody(plant)
    assert _owner(name) == NOBODY

    def open_it(**kw: Any) -> Any:
        if kind == "heap":
            return shmipc.Heap.attach(name, **kw)
        if kind == "value":
            return shmipc.SharedValue.attach(name, **kw)
        return shmipc.open_stream(name, "rb", **kw)

    with pytest.raises(PermissionError, match="trust_owner"):
        open_it()
    for trust in (NOBODY, "any"):
        obj = open_it(trust_owner=trust)
        try:
            if kind == "value":
                assert obj.read() == b"theirs"
            elif kind == "stream":
                assert obj.read() == b"theirs"
            else:
                obj.allocate(64).release()
        finally:
            obj.close()
    shmipc.unlink(name)


def test_trusting_one_other_user_does_not_trust_a_third(name: str) -> None:
    def plant() -> None:
        shmipc.SharedValue.create(name, 64, mode=0o666, persistent=True).close()

    _as_nobody(plant)
    with pytest.raises(PermissionError):
        shmipc.SharedValue.attach(name, trust_owner=NOBODY - 1)
    shmipc.unlink(name)


def test_a_handle_that_trusted_another_user_pickles_with_that_trust(name: str) -> None:
    def plant() -> None:
        shmipc.SharedValue.create(name, 64, mode=0o666, persistent=True).close()

    _as_nobody(plant)
    v = shmipc.SharedValue.attach(name, trust_owner=NOBODY)
    w = pickle.loads(pickle.dumps(v))
    w.write(b"x")
    assert v.read() == b"x"
    w.close()
    v.close()
    shmipc.unlink(name)


@pytest.mark.parametrize("bad", [True, -1, 2**32, "nobody", 1.5])
def test_trust_owner_must_be_a_uid_any_or_none(name: str, bad: Any) -> None:
    with shmipc.SharedValue.create(name, 64):
        with pytest.raises((TypeError, ValueError), match="trust_owner"):
            shmipc.SharedValue.attach(name, trust_owner=bad)
