"""Comm conformance of shm:// (modelled on distributed's own comm tests), plus what is ours:
large frames as writable memfd views, segments lent back and reused, TCP fallback."""

from __future__ import annotations

import asyncio
import importlib.metadata
import multiprocessing as mp
import os
import re
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import pytest

from dask_extras import open_fds, require, run

require("distributed", "dask.array")

import numpy as np  # noqa: E402
from distributed.comm import (  # noqa: E402
    CommClosedError,
    connect,
    get_address_host,
    get_local_address_for,
    listen,
    parse_address,
    parse_host_port,
    resolve_address,
)
from distributed.protocol import Serialized, deserialize, serialize, to_serialize  # noqa: E402
from distributed.utils import get_ip, open_port  # noqa: E402

import shmipc.dask  # noqa: E402

import workers_dask  # noqa: E402

pytestmark = pytest.mark.usefixtures("no_fd_leaks")


async def comm_pair(addr: str = "shm://127.0.0.1", **kwargs: Any) -> tuple[Any, Any]:
    """(connector side, listener side) of one connection."""
    q: asyncio.Queue[Any] = asyncio.Queue()

    async def handle(comm: Any) -> None:
        await q.put(comm)

    async with listen(addr, handle, **kwargs) as listener:
        comm = await connect(listener.contact_address, **kwargs)
        served = await asyncio.wait_for(q.get(), 10)
    return comm, served


def stat(key: str) -> int:
    return shmipc.dask.transfer_stats()[key]


# ---- registration and addresses


def test_backend_is_registered_under_the_shm_entry_point() -> None:
    (ep,) = importlib.metadata.entry_points(group="distributed.comm.backends", name="shm")
    assert ep.value == "shmipc.dask:ShmBackend"
    # A fresh interpreter finds it the way distributed does, through package metadata.
    code = (
        "from distributed.comm.registry import backends, get_backend\n"
        "assert 'shm' not in backends\n"
        "print(type(get_backend('shm')).__module__, type(get_backend('shm')).__name__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split() == ["shmipc.dask", "ShmBackend"]


def test_addresses_are_parsed_and_resolved_as_tcp_ones() -> None:
    assert get_address_host("shm://127.0.0.1:123") == "127.0.0.1"
    assert parse_host_port("shm://[::1]:123") == ("::1", 123)
    assert resolve_address("shm://localhost:456") == "shm://127.0.0.1:456"
    assert resolve_address("shm://0.0.0.0:456") == "shm://0.0.0.0:456"
    assert get_local_address_for("shm://127.0.0.1:80") == "shm://127.0.0.1"
    with pytest.raises(ValueError):
        parse_host_port("shm://localhost")


# ---- client / server


async def check_client_server(addr: str, listen_host: str | None, contact_host: str) -> None:
    async def handle(comm: Any) -> None:
        try:
            assert parse_address(comm.peer_address)[0] == "shm"
            msg = await comm.read()
            assert msg["op"] == "ping"
            msg["op"] = "pong"
            await comm.write(msg)
            assert (await comm.read())["op"] == "foobar"
        finally:
            await comm.close()

    listener = await listen(addr, handle, xxx="ignored")
    try:
        scheme, loc = parse_address(listener.listen_address)
        assert scheme == "shm"
        host, port = parse_host_port(loc)
        if listen_host is not None:
            assert host == listen_host
        assert 1023 < port < 65536
        assert listener.contact_address == f"shm://{contact_host}:{port}"
        seen: list[int] = []

        async def client(key: int, delay: float = 0) -> None:
            comm = await connect(listener.contact_address, xxx="ignored")
            try:
                assert isinstance(comm, shmipc.dask.ShmComm)  # same host: the Unix socket
                assert comm.peer_address == listener.contact_address
                await comm.write({"op": "ping", "data": key})
                await comm.write({"op": "foobar"})
                if delay:
                    await asyncio.sleep(delay)
                assert await comm.read() == {"op": "pong", "data": key}
                seen.append(key)
            finally:
                await comm.close()

        await client(1234)
        await asyncio.gather(*(client(i, 0.05) for i in range(20)))  # many at once
        assert sorted(seen) == [*range(20), 1234]
    finally:
        listener.stop()


def test_client_server_round_trip_over_a_loopback_address() -> None:
    run(check_client_server("shm://127.0.0.1", "127.0.0.1", "127.0.0.1"))
    port = open_port("127.0.0.1")
    run(check_client_server(f"shm://127.0.0.1:{port}", "127.0.0.1", "127.0.0.1"))


def test_client_server_round_trip_over_a_wildcard_listener() -> None:
    # Bound to every interface; contacted on the host's own address, through the Unix
    # socket named for the wildcard.
    run(check_client_server("shm://0.0.0.0", "0.0.0.0", get_ip()))
    run(check_client_server("shm://", None, get_ip()))


def test_comms_report_the_same_host_and_each_others_addresses() -> None:
    async def main() -> None:
        a, b = await comm_pair()
        assert a.same_host and b.same_host
        assert a.peer_address == b.local_address
        assert a.local_address == b.peer_address
        assert get_address_host(a.local_address) == "127.0.0.1"
        assert "closed" not in repr(a) and a.local_address in repr(a)
        await a.close()
        assert "closed" in repr(a)
        await b.close()
        assert "closed" in repr(b) and b.peer_address in repr(b)

    run(main())


def test_many_listeners_get_distinct_addresses_and_stopping_removes_their_sockets() -> None:
    async def main() -> None:
        async def handle(comm: Any) -> None:
            await comm.close()

        listeners = [await listen("shm://127.0.0.1", handle) for _ in range(100)]
        assert len({lst.listen_address for lst in listeners}) == 100
        assert len({lst.contact_address for lst in listeners}) == 100
        ports = {parse_host_port(lst.listen_address)[1] for lst in listeners}
        assert ports <= _unix_ports()
        for lst in listeners:
            lst.stop()
        assert not ports & _unix_ports()

    run(main())


def _unix_ports() -> set[int]:
    """Ports of the shm:// Unix sockets listening in this network namespace."""
    with open("/proc/net/unix") as f:
        return {int(m[1]) for m in re.finditer(r"@shmipc-dask/127\.0\.0\.1/(\d+)", f.read())}


# ---- closing


def test_comm_closed_by_the_peer_makes_reads_and_writes_fail() -> None:
    async def main() -> None:
        async def handle(comm: Any) -> None:
            await comm.close()

        async with listen("shm://127.0.0.1", handle) as listener:
            comm = await connect(listener.contact_address)
            with pytest.raises(CommClosedError):
                await comm.write({})
                await comm.read()
            comm = await connect(listener.contact_address)
            with pytest.raises(CommClosedError):
                await comm.read()
            assert comm.closed()

    run(main())


def test_explicit_close_ends_in_flight_and_later_reads_and_writes() -> None:
    async def main() -> None:
        a, b = await comm_pair()
        a_read = asyncio.ensure_future(a.read())
        b_read = asyncio.ensure_future(b.read())
        await asyncio.sleep(0)
        await a.close()
        with pytest.raises(CommClosedError):
            await a_read
        with pytest.raises(CommClosedError):
            await asyncio.wait_for(b_read, 10)
        for c in (a, b):
            with pytest.raises(CommClosedError):
                await c.read()
            with pytest.raises(CommClosedError):
                await c.write({})
        await b.close()
        await b.close()  # idempotent

    run(main())


def test_abort_closes_at_once_and_the_peer_sees_it() -> None:
    async def main() -> None:
        a, b = await comm_pair()
        pending = asyncio.ensure_future(b.read())
        await asyncio.sleep(0)
        a.abort()
        assert a.closed()
        with pytest.raises(CommClosedError):
            await asyncio.wait_for(pending, 10)
        with pytest.raises(CommClosedError):
            await a.write({"x": 1})
        a.abort()  # idempotent

    run(main())


def test_a_read_cancelled_by_a_timeout_closes_the_comm() -> None:
    async def main() -> None:
        a, b = await comm_pair()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(a.read(), 0.01)
        assert a.closed()
        await b.close()

    run(main())


def test_connecting_to_a_dead_address_times_out() -> None:
    async def main() -> None:
        addr = f"shm://127.0.0.1:{open_port('127.0.0.1')}"
        t0 = time.monotonic()
        with pytest.raises(OSError, match="Timed out trying to connect"):
            await connect(addr, timeout=0.3)
        assert time.monotonic() - t0 >= 0.25

    run(main())


# ---- serialization


def test_deserialize_flag_is_honoured_on_both_sides() -> None:
    big = os.urandom(1 << 20) * 4  # 4 MiB: travels in a memfd segment

    async def listener_side(deserialize_flag: bool, msg: dict[str, Any]) -> Any:
        q: asyncio.Queue[Any] = asyncio.Queue()

        async def handle(comm: Any) -> None:
            try:
                await q.put(await comm.read())
            finally:
                await comm.close()

        async with listen("shm://127.0.0.1", handle, deserialize=deserialize_flag) as lst:
            comm = await connect(lst.contact_address)
        await comm.write(msg)
        out = await asyncio.wait_for(q.get(), 10)
        await comm.close()
        return out

    async def connector_side(deserialize_flag: bool, msg: dict[str, Any]) -> Any:
        done = asyncio.Event()

        async def handle(comm: Any) -> None:
            try:
                await comm.write(msg)
                await done.wait()
            finally:
                await comm.close()

        async with listen("shm://127.0.0.1", handle) as lst:
            comm = await connect(lst.contact_address, deserialize=deserialize_flag)
        try:
            out = await comm.read()
        finally:
            done.set()
            await comm.close()
        return out

    def check(out: dict[str, Any], flag: bool, payload: Any) -> None:
        assert out["op"] == "update" and out["x"] == payload
        if flag:
            assert list(out["to_ser"]) == [payload] and out["ser"] == payload
        else:
            assert isinstance(out["ser"], Serialized)
            assert deserialize(out["ser"].header, out["ser"].frames) == payload
            (to_ser,) = out["to_ser"]
            if isinstance(to_ser, Serialized):
                assert deserialize(to_ser.header, to_ser.frames) == payload
            else:
                assert to_ser == to_serialize(payload)

    async def main() -> None:
        for payload in (123, big):
            for flag in (False, True):
                for side in (listener_side, connector_side):
                    msg = {
                        "op": "update",
                        "x": payload,
                        "to_ser": [to_serialize(payload)],
                        "ser": Serialized(*serialize(payload)),
                    }
                    check(await side(flag, msg), flag, payload)

    run(main())


def test_deserialize_round_trip_keeps_large_payloads_intact() -> None:
    big = os.urandom(1 << 20) * 4

    async def main() -> None:
        for flag in (True, False):
            a, b = await comm_pair(deserialize=flag)
            msg = {
                "op": "update",
                "x": big,
                "to_ser": [to_serialize(big)],
                "ser": Serialized(*serialize(big)),
            }
            await a.write(msg)
            await b.write(await b.read())
            got = await a.read()
            assert sorted(got) == sorted(msg)
            assert got["x"] == big
            if flag:
                assert bytes(got["to_ser"][0]) == big and bytes(got["ser"]) == big
            else:
                assert isinstance(got["ser"], Serialized)
            await a.close()
            await b.close()

    run(main())


def _raise_eof() -> None:
    raise EOFError


class _EOFRaising:
    def __reduce__(self) -> Any:
        return _raise_eof, ()


def test_an_eoferror_while_deserializing_closes_the_comm() -> None:
    async def main() -> None:
        async def handle(comm: Any) -> None:
            await comm.write({"data": to_serialize(_EOFRaising())})
            with pytest.raises(CommClosedError):
                await comm.read()

        async with listen("shm://127.0.0.1", handle) as lst:
            comm = await connect(lst.contact_address)
            with pytest.raises(CommClosedError):
                await comm.read()
            assert comm.closed()

    run(main())


# ---- what shm:// adds


def _memfd_mapped(address: int) -> bool:
    """Whether `address` lies in a mapping of one of our memfd segments."""
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= address < hi:
                return "memfd:shmipc-dask" in line
    return False


def test_large_frames_arrive_as_writable_views_of_a_memfd_and_small_ones_inline() -> None:
    async def main() -> None:
        a, b = await comm_pair()
        big = np.arange(1 << 20, dtype=np.float64)  # 8 MiB
        small = np.arange(100, dtype=np.int32)
        sent0, inline0 = stat("segment_bytes_sent"), stat("inline_bytes_sent")
        await a.write({"big": to_serialize(big), "small": to_serialize(small)})
        got = await b.read()
        assert np.array_equal(got["big"], big) and np.array_equal(got["small"], small)
        assert got["big"].flags.writeable  # no copy needed to get a writable array
        got["big"][0] = -1.0
        assert _memfd_mapped(got["big"].__array_interface__["data"][0])
        assert not _memfd_mapped(got["small"].__array_interface__["data"][0])
        assert stat("segment_bytes_sent") - sent0 == big.nbytes
        assert stat("inline_bytes_sent") - inline0 >= small.nbytes
        del got
        await a.close()
        await b.close()

    run(main())


def test_segments_come_back_when_the_receiver_drops_its_views_and_are_reused() -> None:
    async def main() -> None:
        a, b = await comm_pair()
        x = np.ones(1 << 20, dtype=np.uint8)
        created0, reused0 = stat("segments_created"), stat("segments_reused")
        released0 = stat("releases_received")
        fds = []
        for i in range(50):
            await a.write({"i": i, "x": to_serialize(x)})
            got = await b.read()
            assert got["i"] == i and int(got["x"].sum()) == x.nbytes
            del got  # the last view goes: the segment is lent back
            for _ in range(100):
                if stat("releases_received") - released0 == i + 1:
                    break
                await asyncio.sleep(0.005)
            fds.append(open_fds())
        assert stat("releases_received") - released0 == 50
        assert stat("segments_created") - created0 <= 2
        assert stat("segments_reused") - reused0 >= 48
        assert stat("mappings_reused") >= 48  # the receiver's pages stayed mapped
        assert max(fds[5:]) == min(fds[5:])  # flat
        await a.close()
        await b.close()

    run(main())


def test_a_shm_address_reaches_a_listener_without_a_unix_socket_over_tcp() -> None:
    async def main() -> None:
        async def echo(comm: Any) -> None:
            await comm.write(await comm.read())
            await comm.close()

        async with listen("tcp://127.0.0.1", echo) as lst:  # distributed's own TCP listener
            port = parse_host_port(lst.contact_address)[1]
            comm = await connect(f"shm://127.0.0.1:{port}")
            assert isinstance(comm, shmipc.dask.ShmTCP)
            assert comm.peer_address == f"shm://127.0.0.1:{port}"
            x = np.arange(100_000)
            await comm.write({"x": to_serialize(x)})
            assert np.array_equal((await comm.read())["x"], x)
            await comm.close()

    run(main())


def test_a_listener_in_another_process_echoes_arrays_and_its_death_ends_reads() -> None:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=workers_dask.echo_listener, args=("shm://127.0.0.1", q))
    p.start()
    try:
        addr = q.get(timeout=60)

        async def main() -> None:
            comm = await connect(addr)
            assert isinstance(comm, shmipc.dask.ShmComm)
            for n in (10, 100_000, 3_000_000):
                x = np.random.default_rng(n).random(n)
                await comm.write({"x": to_serialize(x)})
                got = await comm.read()
                assert np.array_equal(got["x"], x)
            pending = asyncio.ensure_future(comm.read())
            await asyncio.sleep(0.05)
            os.kill(p.pid, signal.SIGKILL)
            with pytest.raises(CommClosedError):
                await asyncio.wait_for(pending, 10)
            assert comm.closed()

        run(main())
    finally:
        p.kill()
        p.join(10)
        q.close()
        q.join_thread()


def test_idle_memory_can_be_given_back() -> None:
    async def main() -> None:
        a, b = await comm_pair()
        await a.write({"x": to_serialize(np.ones(1 << 20))})
        del (await b.read())["x"]
        for _ in range(200):
            if stat("pool_free_bytes") and stat("cache_bytes"):
                break
            await asyncio.sleep(0.005)
        held = stat("pool_free_bytes") + stat("cache_bytes")
        assert held >= 2 * (8 << 20)
        assert shmipc.dask.release_idle_memory() == held
        assert stat("pool_free_bytes") == stat("cache_bytes") == 0
        await a.close()
        await b.close()

    run(main())


def test_shm_refuses_to_listen_or_connect_when_encryption_is_required() -> None:
    async def main() -> None:
        async def handle(comm: Any) -> None:
            await comm.close()

        with pytest.raises(RuntimeError, match="encryption required"):
            await listen("shm://127.0.0.1", handle, require_encryption=True)
        async with listen("shm://127.0.0.1", handle) as lst:
            with pytest.raises(RuntimeError, match="encryption required"):
                await connect(lst.contact_address, require_encryption=True, timeout=5)

    run(main())


def test_the_unix_socket_exists_before_the_tcp_port_listens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Else a connector starting with the listener could miss the Unix socket, find the TCP
    # port and settle for TCP on its own host.
    from distributed.comm.tcp import TCPListener

    connectable: list[bool] = []
    tcp_start = TCPListener.start

    async def start(self: Any) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            connectable.append(probe.connect_ex(shmipc.dask._unix_name(self.ip, self.port)) == 0)
        await tcp_start(self)

    monkeypatch.setattr(TCPListener, "start", start)

    async def main() -> None:
        async def handle(comm: Any) -> None:
            await comm.close()

        for addr in ("shm://127.0.0.1", f"shm://127.0.0.1:{open_port('127.0.0.1')}", "shm://"):
            lst = await listen(addr, handle)
            lst.stop()

    run(main())
    assert connectable == [True, True, True]
