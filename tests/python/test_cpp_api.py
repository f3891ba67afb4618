"""The C++ API against Python (API.md section 13): tests/cpp_api is built with CMake against the
installed package (find_package with ``python -m shmipc --cmake-dir``), and its programs
exchange data with this Python process for every kind, in both directions, including a C++
sender SIGKILLed under a Python receiver. The GoogleTest suite of the public API runs too, and
every public header compiles on its own with g++ and clang++ under -Werror.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import shmipc

from testutil import fresh_name

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ROOT / "tests" / "cpp_api"
TIMEOUT = 60  # seconds, for every program run and every wait on one
HEADERS = sorted(p.name for p in Path(shmipc.get_include(), "shmipc").glob("*.hpp"))


def _cmake_dir() -> str:
    out = subprocess.run(
        [sys.executable, "-m", "shmipc", "--cmake-dir"],
        check=True,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    return out.stdout.strip()


def _build_project(bdir: Path, compiler: str) -> Path:
    if shutil.which("cmake") is None:
        pytest.fail("cmake is needed to build the C++ API tests")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    cfg = subprocess.run(
        ["cmake", "-S", str(PROJECT), "-B", str(bdir), *gen, "-DCMAKE_BUILD_TYPE=Release"]
        + [f"-Dshmipc_DIR={_cmake_dir()}", f"-DCMAKE_CXX_COMPILER={compiler}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    out = subprocess.run(
        ["cmake", "--build", str(bdir), "-j2"], capture_output=True, text=True, timeout=1200
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return bdir


@pytest.fixture(scope="session")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/cpp_api built against the installed package, as a user's project would be."""
    return _build_project(tmp_path_factory.mktemp("cpp_api"), "g++")


def run(build: Path, *args: str) -> list[str]:
    """Runs shmipc_peer to completion; its stdout lines."""
    p = subprocess.run(
        [str(build / "shmipc_peer"), *args], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert p.returncode == 0, f"shmipc_peer {args}: rc {p.returncode}\n{p.stdout}{p.stderr}"
    return p.stdout.splitlines()


class Peer:
    """shmipc_peer running alongside this process; lines are read with a bounded wait."""

    def __init__(self, build: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [str(build / "shmipc_peer"), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def line(self, timeout: float = TIMEOUT) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, "the C++ peer printed nothing in time"
        return self.proc.stdout.readline().strip()

    def say(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def finish(self) -> tuple[int, list[str]]:
        out, _ = self.proc.communicate(timeout=TIMEOUT)
        return self.proc.returncode, out.splitlines()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=TIMEOUT)


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    started: list[Peer] = []
    yield started
    for p in started:
        p.kill()


# --- the GoogleTest suite and the headers ----------------------------------------------------


def test_gtest_suite_of_the_public_api(build: Path) -> None:
    p = subprocess.run(
        [str(build / "shmipc_api_tests"), "--gtest_brief=1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "PASSED" in p.stdout


def _sanitized() -> bool:
    """A sanitizer build of the package (.ci/run's ASan pass) exports -fsanitize link flags."""
    return "-fsanitize" in (Path(_cmake_dir()) / "shmipcTargets.cmake").read_text()


def test_project_builds_with_clang_and_its_gtest_suite_passes(tmp_path: Path) -> None:
    if shutil.which("clang++-16") is None:
        pytest.skip("clang++-16 is not installed (.ci/run installs clang-16)")
    if _sanitized():
        pytest.skip("g++'s sanitizer runtimes do not link with clang's; the plain run covers it")
    bdir = _build_project(tmp_path / "clang", "clang++-16")
    p = subprocess.run(
        [str(bdir / "shmipc_api_tests"), "--gtest_brief=1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout + p.stderr


def test_cli_prints_the_directories() -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "shmipc", *args], capture_output=True, text=True, timeout=TIMEOUT
        )

    assert cli("--include").stdout.strip() == shmipc.get_include()
    assert cli("--pkgconfig-dir").stdout.strip() == shmipc._cpp.get_pkgconfig_dir()
    none = cli()
    assert none.returncode == 2 and "a command is required" in none.stderr


@pytest.mark.parametrize("compiler", ["g++", "clang++-16"])
@pytest.mark.parametrize("header", HEADERS)
def test_each_header_compiles_alone_under_werror(
    compiler: str, header: str, tmp_path: Path
) -> None:
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} is not installed (.ci/run installs clang-16)")
    src = tmp_path / "one.cpp"
    src.write_text(f"#include <shmipc/{header}>\n#include <shmipc/{header}>\nint main() {{}}\n")
    flags = ["-std=c++20", "-Wall", "-Wextra", "-Wpedantic", "-Wshadow", "-Wconversion", "-Werror"]
    p = subprocess.run(
        [compiler, *flags, "-fsyntax-only", "-I", shmipc.get_include(), str(src)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert p.returncode == 0, p.stderr


def test_pkg_config_file_builds_a_program(tmp_path: Path) -> None:
    if shutil.which("pkg-config") is None:
        pytest.skip("pkg-config is not installed")
    env = dict(os.environ, PKG_CONFIG_PATH=shmipc._cpp.get_pkgconfig_dir())
    flags = subprocess.run(
        ["pkg-config", "--cflags", "--libs", "shmipc"],
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT,
        check=True,
    ).stdout.split()
    version = subprocess.run(
        ["pkg-config", "--modversion", "shmipc"],
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT,
        check=True,
    ).stdout.strip()
    assert version == shmipc.__version__
    src = tmp_path / "hello.cpp"
    src.write_text(
        "#include <shmipc/shmipc.hpp>\n#include <cstdio>\n"
        'int main() { std::puts(shmipc::normalize_name("x").c_str()); }\n'
    )
    exe = tmp_path / "hello"
    subprocess.run(
        ["g++", "-std=c++20", str(src), "-o", str(exe), *flags],
        check=True,
        timeout=300,
    )
    assert (
        subprocess.run([str(exe)], capture_output=True, text=True, timeout=TIMEOUT).stdout == "/x\n"
    )


def test_cmake_dir_and_include_agree() -> None:
    cmake_dir = Path(_cmake_dir())
    assert (cmake_dir / "shmipcConfig.cmake").is_file()
    assert (cmake_dir / "shmipcConfigVersion.cmake").is_file()
    assert Path(shmipc.get_cmake_dir()) == cmake_dir
    assert (Path(shmipc.get_include()) / "shmipc" / "shmipc.hpp").is_file()
    assert (Path(shmipc._cpp.get_library_dir()) / "libshmipc.a").is_file()
    version = (cmake_dir / "shmipcConfigVersion.cmake").read_text()
    assert f'set(PACKAGE_VERSION "{shmipc.__version__}")' in version


# --- channels --------------------------------------------------------------------------------


def test_channel_cpp_sender_python_receiver(build: Path, name: str) -> None:
    with shmipc.Heap.create(name, size=4 << 20) as heap:
        ch = heap.channel("c2py")
        assert run(build, "channel-send", name, "c2py", "3") == ["sent 5"]
        for i in range(3):
            with ch.recv(timeout=TIMEOUT) as blk:
                assert bytes(blk) == f"msg-{i}".encode()
        arr = ch.recv_array(timeout=TIMEOUT)
        assert arr.dtype == np.float32 and arr.shape == (2, 3)
        np.testing.assert_array_equal(arr, np.arange(6, dtype=np.float32).reshape(2, 3) + 0.5)
        del arr
        with ch.recv(timeout=TIMEOUT) as blk:  # the block the C++ side moved: zero copy
            assert bytes(blk) == b"\xab" * 1024
        with pytest.raises(EOFError):
            ch.recv(timeout=TIMEOUT)
        ch.close()


def test_channel_python_sender_cpp_receiver(build: Path, name: str) -> None:
    with shmipc.Heap.create(name, size=4 << 20) as heap:
        ch = heap.channel("py2c")
        for i in range(3):
            ch.send(f"py-{i}".encode())
        ch.send_array(np.arange(4, dtype=np.int32).reshape(2, 2))
        ch.send_array(np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)))
        blk = heap.allocate(16)
        memoryview(blk)[:] = b"0123456789abcdef"
        ch.send(blk)
        ch.close()
        assert run(build, "channel-recv", name, "py2c") == [
            "bytes py-0",
            "bytes py-1",
            "bytes py-2",
            "array <i4 2,2 C 0,1,2,3",
            "array <f8 2,3 F 0.000000,3.000000,1.000000,4.000000,2.000000,5.000000",
            "bytes 0123456789abcdef",
            "eof",
        ]


def test_topic_cpp_publisher_python_subscribers(build: Path, name: str, peers: list[Peer]) -> None:
    with shmipc.Heap.create(name, size=4 << 20) as heap:
        base = heap.stats()["used"]
        peer = Peer(build, "topic-publish", name, "t", "3", "2")
        peers.append(peer)
        assert peer.line() == "ready"
        subs = [heap.subscriber("t") for _ in range(2)]
        for sub in subs:
            for i in range(3):
                with sub.recv(timeout=TIMEOUT) as s:
                    assert bytes(s) == f"sample-{i}".encode()
            arr = sub.recv_array(timeout=TIMEOUT)
            assert arr.dtype == np.int32 and arr.shape == (3, 2) and not arr.flags.writeable
            np.testing.assert_array_equal(arr, np.arange(10, 16, dtype=np.int32).reshape(3, 2))
            del arr
            with sub.recv(timeout=TIMEOUT) as s:  # the same block for both: zero copy
                assert bytes(s) == b"\x5a" * 4096
            with pytest.raises(EOFError):
                sub.recv(timeout=TIMEOUT)
        rc, out = peer.finish()
        assert rc == 0 and out == ["published 5"]
        for sub in subs:
            sub.close()
        heap.remove("t")
        assert heap.stats()["used"] <= base


def test_topic_python_publisher_cpp_subscribers(build: Path, name: str, peers: list[Peer]) -> None:
    with shmipc.Heap.create(name, size=4 << 20) as heap:
        pub = heap.publisher("t", capacity=8)
        cpp = [Peer(build, "topic-subscribe", name, "t") for _ in range(2)]
        peers.extend(cpp)
        for p in cpp:
            assert p.line() == "subscribed"
        for _ in range(int(TIMEOUT * 100)):
            if heap.topics()["t"]["subscribers"] == 2:
                break
            time.sleep(0.01)
        for i in range(3):
            pub.publish(f"py-{i}".encode(), timeout=TIMEOUT)
        pub.publish(np.arange(4, dtype=np.float64).reshape(2, 2), timeout=TIMEOUT)
        pub.close()
        for p in cpp:
            rc, out = p.finish()
            assert rc == 0
            assert out == [
                "bytes py-0",
                "bytes py-1",
                "bytes py-2",
                "array <f8 2,2 C 0.000000,1.000000,2.000000,3.000000",
                "eof",
            ]
        heap.remove("t")


def test_sigkilled_cpp_publisher_gives_python_subscriber_peer_died(
    build: Path, name: str, peers: list[Peer]
) -> None:
    with shmipc.Heap.create(name, size=4 << 20) as heap:
        peer = Peer(build, "topic-publish", name, "k", "0", "5")  # waits for 5 subscribers
        peers.append(peer)
        assert peer.line() == "ready"
        sub = heap.subscriber("k")
        peer.kill()
        with pytest.raises(shmipc.PeerDiedError):
            sub.recv(timeout=TIMEOUT)
        sub.close()
        heap.remove("k")


def test_channel_heap_created_by_cpp(build: Path, name: str, peers: list[Peer]) -> None:
    peer = Peer(build, "heap-create", name, "made", "4")
    peers.append(peer)
    assert peer.line() == "ready"
    with shmipc.Heap.attach(name) as heap:
        ch = heap.channel("made")
        got = [bytes(ch.recv(timeout=TIMEOUT)) for _ in range(4)]
        assert got == [f"from-cpp-{i}".encode() for i in range(4)]
        with pytest.raises(EOFError):
            ch.recv(timeout=TIMEOUT)
        ch.close()
    peer.say("done")
    rc, out = peer.finish()
    assert rc == 0 and out == ["closed"]
    assert not os.path.exists(f"/dev/shm/{name}")  # the C++ owner removed its name


def test_sigkilled_cpp_sender_gives_python_receiver_peer_died(
    build: Path, name: str, peers: list[Peer]
) -> None:
    with shmipc.Heap.create(name, size=4 << 20) as heap:
        ch = heap.channel("dies")
        peer = Peer(build, "channel-send-and-hang", name, "dies", "2")
        peers.append(peer)
        assert peer.line() == "ready"
        peer.proc.send_signal(signal.SIGKILL)
        peer.proc.wait(TIMEOUT)
        assert bytes(ch.recv(timeout=TIMEOUT)) == b"msg-0"  # what it sent arrives
        assert bytes(ch.recv(timeout=TIMEOUT)) == b"msg-1"
        with pytest.raises(shmipc.PeerDiedError):  # the death ends the wait (not TimeoutError)
            ch.recv(timeout=TIMEOUT)
        ch.close()


def test_killed_python_sender_gives_cpp_receiver_peer_died(build: Path, name: str) -> None:
    code = (
        "import os, signal, sys, shmipc\n"
        "h = shmipc.Heap.attach(sys.argv[1]); ch = h.channel('pydies')\n"
        "ch.send(b'before'); os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    with shmipc.Heap.create(name, size=4 << 20):
        p = subprocess.run([sys.executable, "-c", code, name], timeout=TIMEOUT)
        assert p.returncode == -signal.SIGKILL
        assert run(build, "channel-wait", name, "pydies") == ["bytes before", "peer-died"]


# --- values ----------------------------------------------------------------------------------


def test_value_cpp_writes_python_reads(build: Path, name: str) -> None:
    with shmipc.SharedValue.create(name, size=4096) as v:
        run(build, "value-write", name, "text")
        assert v.read() == "h\u00e9llo from C++"
        run(build, "value-write", name, "bytes")
        assert v.read() == b"\x00\x01\xff"
        run(build, "value-write", name, "array")
        a = v.read()
        assert a.dtype == np.float64 and a.shape == (3, 2)
        np.testing.assert_array_equal(a, np.arange(6).reshape(3, 2) + 1.5)
        assert v.version == 3


def test_value_python_writes_cpp_reads(build: Path, name: str) -> None:
    with shmipc.SharedValue.create(name, size=4096) as v:
        assert run(build, "value-read", name) == ["none", "version 0"]
        v.write("texte \u00e9")
        assert run(build, "value-read", name) == ["text texte \u00e9", "version 1"]
        v.write(b"raw bytes")
        assert run(build, "value-read", name) == ["bytes 9 raw bytes", "version 2"]
        v.write(np.arange(6, dtype=np.int32).reshape(2, 3))
        assert run(build, "value-read", name) == ["array <i4 2,3 C 0,1,2,3,4,5", "version 3"]
        v.write(np.asfortranarray(np.arange(4, dtype=np.float32).reshape(2, 2)))  # copied C
        assert run(build, "value-read", name)[0] == (
            "array <f4 2,2 C 0.000000,1.000000,2.000000,3.000000"
        )
        v.write(np.float64(2.5))  # a NumPy scalar: a 0-d array
        assert run(build, "value-read", name)[0] == "array <f8  C 2.500000"


def test_value_created_by_cpp(build: Path, name: str, peers: list[Peer]) -> None:
    peer = Peer(build, "value-create", name)
    peers.append(peer)
    assert peer.line() == "ready"
    with shmipc.SharedValue.attach(name) as v:
        assert v.read() == "created by C++"
        v.write("from python")
    rc, out = peer.finish()
    assert rc == 0 and out == ["got from python"]


# --- queues ----------------------------------------------------------------------------------


def test_queue_both_directions(build: Path, name: str) -> None:
    with shmipc.MessageQueue.create(name, maxsize=64, max_message_size=256) as q:
        assert run(build, "queue-put", name, "5") == ["put 5"]
        assert [q.get_bytes(timeout=TIMEOUT) for _ in range(5)] == [
            f"job-{i}".encode() for i in range(5)
        ]
        for i in range(3):
            q.put_bytes(f"py-job-{i}".encode())
        assert run(build, "queue-get", name, "3") == [
            "got py-job-0",
            "got py-job-1",
            "got py-job-2",
            "done",
        ]
        assert q.empty()


def test_queue_created_by_cpp(build: Path, name: str, peers: list[Peer]) -> None:
    peer = Peer(build, "queue-create", name, "2")
    peers.append(peer)
    assert peer.line() == "ready"
    with shmipc.MessageQueue.attach(name) as q:
        q.put_bytes(b"first")
        q.put_bytes(b"second", timeout=TIMEOUT)
    rc, out = peer.finish()
    assert rc == 0 and out == ["got first", "got second", "done"]


# --- buffers over a Unix socket --------------------------------------------------------------


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    srv.settimeout(TIMEOUT)
    yield srv, path
    srv.close()


def test_buffer_cpp_sends_python_receives(
    build: Path, listener: tuple[socket.socket, str], peers: list[Peer]
) -> None:
    srv, path = listener
    peer = Peer(build, "buffer-send", path)
    peers.append(peer)
    conn, _ = srv.accept()
    with conn:
        buf = shmipc.recv(conn, timeout=TIMEOUT)
        assert buf.nbytes == 4096 and buf.meta == {"from": "cpp", "n": 4096}
        data = np.frombuffer(buf, np.uint8)
        np.testing.assert_array_equal(data, np.arange(4096) % 251)
        del data
        memoryview(buf)[0] = 9  # writable for the receiver
        buf.close()
        arr = shmipc.recv_array(conn, timeout=TIMEOUT)
        assert arr.dtype == np.uint16 and arr.shape == (3, 4)
        np.testing.assert_array_equal(arr, np.arange(100, 112).reshape(3, 4))
    rc, out = peer.finish()
    assert rc == 0 and out == ["readonly 1"]  # the C++ sender's buffer is read-only: moved


def test_buffer_python_sends_cpp_receives(
    build: Path, listener: tuple[socket.socket, str], peers: list[Peer]
) -> None:
    srv, path = listener
    peer = Peer(build, "buffer-recv", path)
    peers.append(peer)
    conn, _ = srv.accept()
    with conn:
        buf = shmipc.Buffer.from_bytes(bytes(range(200)))
        shmipc.send(conn, buf, meta={"who": "python"})
        shmipc.send_array(conn, np.arange(5, dtype=np.float32) * 2)
    rc, out = peer.finish()
    assert rc == 0, out
    assert out == [
        f"buffer 200 sum={sum(range(200))} readonly=0 meta=2:"
        + json.dumps({"who": "python"}, separators=(",", ":")),
        "array <f4 5 C 0.000000,2.000000,4.000000,6.000000,8.000000",
        "eof",
    ]


# --- streams ---------------------------------------------------------------------------------


def test_stream_both_directions(build: Path) -> None:
    n = fresh_name()
    with shmipc.open_stream(n, "w+b", owner=True) as f:
        f.write(b"from python\n")
        f.flush()
        assert run(build, "stream-read", n) == ["read from python", ""]  # its own newline
        f.seek(0)
        f.truncate()
        f.flush()
        assert run(build, "stream-write", n, "from C++") == ["wrote 8"]
        f.seek(0)
        assert f.read() == b"from C++"
    assert not os.path.exists(f"/dev/shm/{n}")


# --- examples/cpp: every pair runs, the creator first ---------------------------------------

EXAMPLES = ROOT / "examples" / "cpp"
PAIRS = {
    # name: (creator, other, what the creator prints); "x.py" runs in Python, "x" is C++
    "channel_cpp_to_py": ("channel_consumer.py", "channel_producer", "consumer: got 10 frames"),
    "channel_py_to_cpp": (
        "channel_consumer",
        "channel_producer.py",
        "consumer: 5 arrays, total 10000.0",
    ),
    "value_cpp_to_py": ("value_reader.py", "value_writer", "reader: version 6, last value 'done'"),
    "value_py_to_cpp": ("value_reader", "value_writer.py", "reader: int32 array of 10, last 9"),
    "queue_cpp_to_py": ("queue_consumer.py", "queue_producer", "consumer: 10 jobs, last 'job 9'"),
    "queue_py_to_cpp": (
        "queue_consumer",
        "queue_producer.py",
        "consumer: 10 messages, last 'result 9'",
    ),
    "buffer_cpp_to_py": (
        "buffer_receiver.py",
        "buffer_sender",
        "receiver: float32 (480, 640), mean 319.5",
    ),
    "buffer_py_to_cpp": ("buffer_receiver", "buffer_sender.py", "int64 array of 100, last 99"),
}


@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_example_pair(build: Path, pair: str, tmp_path: Path) -> None:
    creator, other, expected = PAIRS[pair]
    arg = str(tmp_path / "sock") if pair.startswith("buffer") else fresh_name("ex")

    def command(prog: str) -> list[str]:
        if prog.endswith(".py"):
            return [sys.executable, str(EXAMPLES / prog), arg]
        return [str(build / prog), arg]

    first = subprocess.Popen(command(creator), stdout=subprocess.PIPE, text=True)
    try:
        second = subprocess.run(command(other), capture_output=True, text=True, timeout=TIMEOUT)
        out, _ = first.communicate(timeout=TIMEOUT)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate(timeout=TIMEOUT)
    assert second.returncode == 0, second.stdout + second.stderr
    assert first.returncode == 0, out
    assert expected in out, out
