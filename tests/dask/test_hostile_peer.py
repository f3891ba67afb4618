"""A peer that speaks the shm:// Unix protocol badly: every case is a clear CommClosedError on
the reading side, never a hang or a crash, and every fd it sent is closed."""

from __future__ import annotations

import array
import asyncio
import fcntl
import os
import socket
import sys
import tempfile
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from dask_extras import require, run

require("distributed", "dask.array")

from distributed.comm import CommClosedError, connect, listen, parse_host_port  # noqa: E402
from distributed.protocol import dumps  # noqa: E402

import shmipc.dask as sd  # noqa: E402

pytestmark = pytest.mark.usefixtures("no_fd_leaks")


def inline_message(frames: list[bytes]) -> bytes:
    head = sd._REC.pack(sd._KIND_MESSAGE, len(frames), 0, sum(map(len, frames)))
    descs = b"".join(sd._FRAME.pack(len(f), sd._INLINE, 0) for f in frames)
    return head + descs + b"".join(frames)


def handshake() -> bytes:
    info = {"compression": None, "python": tuple(sys.version_info)[:3], "pickle-protocol": 5}
    return inline_message([bytes(f) for f in dumps(info)])


def segment_message(
    nseg: int, seg_bytes: int, frame_bytes: int, offset: int = 0, lend_id: int = 1
) -> bytes:
    """A message whose one frame lives in segment 0 (descriptors for nseg segments)."""
    head = sd._REC.pack(sd._KIND_MESSAGE, 1, nseg, 0)
    segs = b"".join(sd._SEG.pack(lend_id + i, seg_bytes) for i in range(nseg))
    return head + segs + sd._FRAME.pack(frame_bytes, 0, offset)


def memfd(size: int, seals: int | None = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW) -> int:
    fd = os.memfd_create("hostile", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if seals is not None:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


Sender = Callable[[socket.socket], Coroutine[Any, Any, None]]


async def served_read_error(send: Sender) -> str:
    """Connects a raw client that completes both handshakes, lets `send` write to it, and
    returns the error the listener's comm.read() raised."""
    errors: asyncio.Queue[BaseException | None] = asyncio.Queue()

    async def handle(comm: Any) -> None:
        try:
            await comm.read()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            await errors.put(e)
        else:
            await errors.put(None)
        finally:
            await comm.close()

    async with listen("shm://127.0.0.1", handle) as listener:
        _, port = parse_host_port(listener.contact_address)
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        try:
            sock.bind("")
            await loop.sock_connect(sock, sd._unix_name("127.0.0.1", port))
            local = f"127.0.0.1:{sd._autobind_id(sock.getsockname())}"
            await loop.sock_sendall(sock, sd._hello(f"127.0.0.1:{port}", local))
            status = sd._WELCOME.unpack(await sd._recv_exact(loop, sock, sd._WELCOME.size))[-1]
            assert status == 0
            await loop.sock_sendall(sock, handshake())
            await send(sock)
            err = await asyncio.wait_for(errors.get(), 10)
        finally:
            sock.close()
    assert isinstance(err, CommClosedError), err
    return str(err)


def send_with_fds(data: bytes, fds: list[int]) -> Sender:
    async def send(sock: socket.socket) -> None:
        try:
            sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        finally:
            for fd in fds:
                os.close(fd)

    return send


def send_bytes(data: bytes, then_close: bool = False) -> Sender:
    async def send(sock: socket.socket) -> None:
        await asyncio.get_running_loop().sock_sendall(sock, data)
        if then_close:
            sock.shutdown(socket.SHUT_WR)

    return send


def test_a_pipe_instead_of_a_memfd_is_refused() -> None:
    r, w = os.pipe()
    err = run(served_read_error(send_with_fds(segment_message(1, 4096, 10), [r, w][:1])))
    os.close(w)
    assert "not a memory file" in err


def test_a_file_on_disk_instead_of_a_memfd_is_refused() -> None:
    with tempfile.TemporaryFile() as f:
        f.truncate(1 << 16)
        err = run(
            served_read_error(send_with_fds(segment_message(1, 4096, 10), [os.dup(f.fileno())]))
        )
    assert "not a sealable memfd" in err or "not sealed against shrinking" in err


def test_a_memfd_that_can_still_shrink_is_refused() -> None:
    err = run(served_read_error(send_with_fds(segment_message(1, 4096, 10), [memfd(4096, None)])))
    assert "not sealed against shrinking" in err


def test_a_memfd_smaller_than_announced_is_refused() -> None:
    err = run(served_read_error(send_with_fds(segment_message(1, 1 << 20, 10), [memfd(4096)])))
    assert "smaller (4096 bytes) than announced (1048576)" in err


def test_a_message_announcing_more_memfds_than_arrived_is_refused() -> None:
    err = run(served_read_error(send_with_fds(segment_message(2, 4096, 10), [memfd(4096)])))
    assert "announces 2 memfds but 1 arrived" in err


def test_a_frame_outside_its_segment_is_refused() -> None:
    msg = segment_message(1, 4096, 100, offset=4000)
    err = run(served_read_error(send_with_fds(msg, [memfd(4096)])))
    assert "frame outside its segment" in err


def test_more_fds_than_fit_the_control_buffer_are_refused() -> None:
    fds = [memfd(4096) for _ in range(100)]
    err = run(served_read_error(send_with_fds(segment_message(1, 4096, 10), fds)))
    assert "MSG_CTRUNC" in err


def test_fds_that_no_message_claims_are_refused() -> None:
    async def send(sock: socket.socket) -> None:
        for _ in range(3):
            await send_with_fds(b"\0", [memfd(4096) for _ in range(30)])(sock)

    err = run(served_read_error(send))
    assert "fds no message claims" in err


def test_an_unknown_record_kind_is_refused() -> None:
    err = run(served_read_error(send_bytes(sd._REC.pack(99, 0, 0, 0))))
    assert "unknown record kind 99" in err


def test_out_of_range_counts_are_refused() -> None:
    err = run(served_read_error(send_bytes(sd._REC.pack(sd._KIND_MESSAGE, 1 << 30, 0, 0))))
    assert "out of range" in err


def test_inline_bytes_that_belong_to_no_frame_are_refused() -> None:
    msg = sd._REC.pack(sd._KIND_MESSAGE, 1, 0, 10) + sd._FRAME.pack(4, sd._INLINE, 0) + b"x" * 10
    err = run(served_read_error(send_bytes(msg)))
    assert "6 inline bytes belong to no frame" in err


def test_releasing_a_segment_never_lent_is_refused() -> None:
    rec = sd._REC.pack(sd._KIND_RELEASE, 1, 0, 0) + sd._ID.pack(12345)
    err = run(served_read_error(send_bytes(rec)))
    assert "released segment 12345 it does not hold" in err


def test_a_message_cut_short_by_the_peer_closing_ends_the_read() -> None:
    msg = inline_message([b"x" * 100_000])[:50_000]
    err = run(served_read_error(send_bytes(msg, then_close=True)))
    assert "peer closed the connection" in err


async def dropped(loop: asyncio.AbstractEventLoop, raw: socket.socket) -> bool:
    """Whether the listener closed the connection (end of file, or a reset when it closed
    with our bytes unread)."""
    try:
        return await asyncio.wait_for(loop.sock_recv(raw, 100), 10) == b""
    except ConnectionResetError:
        return True


def test_a_peer_that_does_not_speak_the_protocol_is_dropped_and_others_still_connect() -> None:
    async def main() -> None:
        async def handle(comm: Any) -> None:
            await comm.write(await comm.read())

        async with listen("shm://127.0.0.1", handle) as listener:
            _, port = parse_host_port(listener.contact_address)
            loop = asyncio.get_running_loop()
            for junk in (b"GET / HTTP/1.0\r\n\r\n" + b"\0" * 64, b"\0" * 200):
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
                    raw.setblocking(False)
                    await loop.sock_connect(raw, sd._unix_name("127.0.0.1", port))
                    await loop.sock_sendall(raw, junk)
                    assert await dropped(loop, raw)
            comm = await connect(listener.contact_address)
            await comm.write({"still": "serving"})
            assert await comm.read() == {"still": "serving"}
            await comm.close()

    run(main())


def test_a_peer_that_never_finishes_the_handshake_is_dropped_after_the_timeout() -> None:
    import dask

    async def main() -> None:
        async def handle(comm: Any) -> None:
            await comm.close()

        with dask.config.set({"distributed.comm.timeouts.connect": "200ms"}):
            async with listen("shm://127.0.0.1", handle) as listener:
                _, port = parse_host_port(listener.contact_address)
                loop = asyncio.get_running_loop()
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
                    raw.setblocking(False)
                    await loop.sock_connect(raw, sd._unix_name("127.0.0.1", port))
                    await loop.sock_sendall(raw, b"shmipcDK")  # and then nothing
                    assert await dropped(loop, raw)

    run(main())
