"""C++ <-> Python over shmipc channels: the C++ API (include/shmipc) against Python peers.

Builds benchmarks/cpp_api against the installed package (find_package with
``python -m shmipc --cmake-dir``), then measures, in the same run:

  64 B round trip   ping on channel "ping", echo back on "pong" (one heap), mean over N round
                    trips, best of 3 rounds: Python<->C++ both ways, Python<->Python,
                    C++<->C++, and mp.Pipe between two Python processes. Default spin (50 µs)
                    everywhere.
  1080p frames/s    1920x1080x3 uint8 frames (6.2 MB) over a channel of 8, zero copy (each frame
                    a heap block moved to the receiver, which reads one pixel and frees it):
                    C++ -> Python, Python -> Python, Python -> C++, C++ -> Python writing every
                    byte of each frame (what a camera driver does), and mp.Pipe.send_bytes of
                    the same frames.

    python benchmarks/bench_cpp.py [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import shmipc  # noqa: E402

from _common import fmt_ratio, fmt_time, machine, table  # noqa: E402

HERE = Path(__file__).resolve().parent
SHAPE = (1080, 1920, 3)
FRAME = int(np.prod(SHAPE))
MSG = b"x" * 64


def build() -> Path:
    bdir = HERE.parent / "build" / "bench-cpp"
    cmake_dir = subprocess.run(
        [sys.executable, "-m", "shmipc", "--cmake-dir"], check=True, capture_output=True, text=True
    ).stdout.strip()
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run(
        ["cmake", "-S", str(HERE / "cpp_api"), "-B", str(bdir), *gen, f"-Dshmipc_DIR={cmake_dir}"]
        + ["-DCMAKE_BUILD_TYPE=Release"],
        check=True,
        capture_output=True,
    )
    subprocess.run(["cmake", "--build", str(bdir), "-j2"], check=True, capture_output=True)
    return bdir / "bench_peer"


def fresh() -> str:
    return f"shmipc-bench-cpp-{os.getpid()}-{time.monotonic_ns()}"


# ---- Python children (module level for spawn) ----
def py_echo(name: str) -> None:
    with shmipc.Heap.attach(name) as heap:
        inp, out = heap.channel("ping"), heap.channel("pong")
        while True:
            try:
                b = inp.recv_bytes(timeout=60)
            except EOFError:
                break
            out.send(b)
        out.close()
        inp.close()


def py_frames_send(name: str, n: int) -> None:
    with shmipc.Heap.attach(name) as heap:
        ch = heap.channel("frames")
        for i in range(n):
            a = heap.allocate(FRAME).as_array(np.uint8, SHAPE)
            a[0, 0, 0] = i & 0xFF
            ch.send_array(a, timeout=60)  # the sole view of its block: the block moves
            del a
        ch.close()


def pipe_echo(conn: Any) -> None:
    while (b := conn.recv_bytes()) != b"":
        conn.send_bytes(b)


def pipe_frames(conn: Any, n: int) -> None:
    frame = bytes(FRAME)
    for _ in range(n):
        conn.send_bytes(frame)


# ---- round trips ----
def py_ping(heap: shmipc.Heap, n: int) -> float:
    out, inp = heap.channel("ping"), heap.channel("pong")
    for _ in range(1000):
        out.send(MSG)
        inp.recv_bytes(timeout=60)
    t0 = time.perf_counter()
    for _ in range(n):
        out.send(MSG)
        inp.recv_bytes(timeout=60)
    dt = (time.perf_counter() - t0) / n
    out.close()
    try:
        inp.recv_bytes(timeout=60)
    except EOFError:
        pass
    inp.close()
    return dt


def rt_round(kind: str, peer: Path, n: int) -> float:
    name = fresh()
    ctx = mp.get_context("spawn")
    with shmipc.Heap.create(name, size=16 << 20) as heap:
        if kind == "py->cpp":  # Python pings, C++ echoes
            echo = subprocess.Popen([str(peer), "echo", name])
            dt = py_ping(heap, n)
            echo.wait(60)
        elif kind == "cpp->py":  # C++ pings, Python echoes
            p = ctx.Process(target=py_echo, args=(name,))
            p.start()
            out = subprocess.run(
                [str(peer), "ping", name, str(n), "64"], capture_output=True, text=True, timeout=300
            ).stdout
            p.join(60)
            dt = float(out.split()[1]) * 1e-9
        elif kind == "py->py":
            p = ctx.Process(target=py_echo, args=(name,))
            p.start()
            dt = py_ping(heap, n)
            p.join(60)
        else:  # cpp->cpp
            echo = subprocess.Popen([str(peer), "echo", name])
            out = subprocess.run(
                [str(peer), "ping", name, str(n), "64"], capture_output=True, text=True, timeout=300
            ).stdout
            echo.wait(60)
            dt = float(out.split()[1]) * 1e-9
    return dt


def rt_pipe(n: int) -> float:
    ctx = mp.get_context("spawn")
    a, b = ctx.Pipe()
    p = ctx.Process(target=pipe_echo, args=(b,))
    p.start()
    for _ in range(1000):
        a.send_bytes(MSG)
        a.recv_bytes()
    t0 = time.perf_counter()
    for _ in range(n):
        a.send_bytes(MSG)
        a.recv_bytes()
    dt = (time.perf_counter() - t0) / n
    a.send_bytes(b"")
    p.join(60)
    return dt


# ---- frames ----
def py_consume(heap: shmipc.Heap, n: int) -> float:
    ch = heap.channel("frames", capacity=8)
    t0 = 0.0
    for i in range(n):
        f = ch.recv_array(timeout=60)
        assert f.shape == SHAPE and f[0, 0, 0] == i & 0xFF
        del f
        if i == 0:
            t0 = time.perf_counter()
    fps = (n - 1) / (time.perf_counter() - t0)
    ch.close()
    return fps


def frames_round(kind: str, peer: Path, n: int) -> float:
    name = fresh()
    ctx = mp.get_context("spawn")
    with shmipc.Heap.create(name, size=256 << 20) as heap:
        heap.channel("frames", capacity=8)  # created here: capacity 8 for everyone
        if kind in ("cpp->py", "cpp(fill)->py"):
            fill = "1" if kind == "cpp(fill)->py" else "0"
            prod = subprocess.Popen([str(peer), "frames-send", name, str(n), fill])
            fps = py_consume(heap, n)
            prod.wait(60)
        elif kind == "py->py":
            p = ctx.Process(target=py_frames_send, args=(name, n))
            p.start()
            fps = py_consume(heap, n)
            p.join(60)
        else:  # py->cpp
            p = ctx.Process(target=py_frames_send, args=(name, n))
            p.start()
            out = subprocess.run(
                [str(peer), "frames-recv", name, str(n)],
                capture_output=True,
                text=True,
                timeout=300,
            ).stdout
            p.join(60)
            fps = float(out.split()[1])
    return fps


def frames_pipe(n: int) -> float:
    ctx = mp.get_context("spawn")
    a, b = ctx.Pipe(duplex=False)
    p = ctx.Process(target=pipe_frames, args=(b, n))
    p.start()
    t0 = 0.0
    for i in range(n):
        f = np.frombuffer(a.recv_bytes(), np.uint8).reshape(SHAPE)
        assert f[0, 0, 0] == 0
        if i == 0:
            t0 = time.perf_counter()
    fps = (n - 1) / (time.perf_counter() - t0)
    p.join(60)
    return fps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n_rt = 5000 if args.quick else 50000
    n_frames = 60 if args.quick else 400
    t_start = time.perf_counter()
    peer = build()
    print(f"Machine: {machine()}; load average {os.getloadavg()[0]:.2f} at the start\n")

    rt = {
        k: min(rt_round(k, peer, n_rt) for _ in range(3))
        for k in ("py->cpp", "cpp->py", "py->py", "cpp->cpp")
    }
    rt["mp.Pipe (py<->py)"] = min(rt_pipe(n_rt) for _ in range(3))
    labels = {
        "py->cpp": "Python pings, C++ echoes",
        "cpp->py": "C++ pings, Python echoes",
        "py->py": "Python <-> Python",
        "cpp->cpp": "C++ <-> C++",
        "mp.Pipe (py<->py)": "mp.Pipe, Python <-> Python",
    }
    pipe = rt["mp.Pipe (py<->py)"]
    print(f"## 64 B round trip over shmipc channels (mean of {n_rt}, best of 3)\n")
    print(
        table(
            ["pair", "round trip", "Pipe / this"],
            [[labels[k], fmt_time(v), fmt_ratio(pipe / v)] for k, v in rt.items()],
        )
    )

    fr = {
        k: max(frames_round(k, peer, n_frames) for _ in range(3))
        for k in ("cpp->py", "py->py", "py->cpp", "cpp(fill)->py")
    }
    fr["mp.Pipe"] = max(frames_pipe(max(20, n_frames // 4)) for _ in range(3))
    flabels = {
        "cpp->py": "C++ -> Python (zero copy)",
        "py->py": "Python -> Python (zero copy)",
        "py->cpp": "Python -> C++ (zero copy)",
        "cpp(fill)->py": "C++ writes every byte -> Python",
        "mp.Pipe": "mp.Pipe.send_bytes, Python -> Python",
    }
    print(
        f"\n## 1080p uint8 frames (6.2 MB) per second over a channel"
        f" ({n_frames} frames, best of 3)\n"
    )
    print(
        table(
            ["pair", "frames/s", "GB/s handed over", "this / mp.Pipe"],
            [
                [flabels[k], f"{v:,.0f}", f"{v * FRAME / 1e9:.1f}", fmt_ratio(v / fr["mp.Pipe"])]
                for k, v in fr.items()
            ],
        )
    )
    print(f"\n_{time.perf_counter() - t_start:.0f} s_")


if __name__ == "__main__":
    main()
