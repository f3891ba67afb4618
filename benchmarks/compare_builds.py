"""Before/after: the run_all.py benchmarks against two builds of shmipc, interleaved.

    python benchmarks/compare_builds.py --base /work/venv-base/bin/python [--main python3]
        [--rounds 3] [--quick] [--scripts bench_heap.py,bench_dict.py] [--save DIR]

Each benchmark script (this checkout's copy, so both builds run the same measurement) runs
`--rounds` times with each interpreter, alternating base and main script by script, so that a
slow or fast phase of a shared VM hits both builds. Every numeric table cell is parsed (times:
lower is better; rates and bare counts: higher is better; ratio cells are skipped), the best of
the rounds is kept per build, and the cells of shmipc's own rows and columns are compared. The
best of several rounds is what a build can do on this machine; single runs on a noisy VM differ
by more than the 5% this comparison looks for. The change of the medians of the rounds is printed
beside it: where a row's runs fall into two modes (processes sharing a core or not), the best
picks whichever build hit the fast mode once, the median shows where most runs landed. Prints a
markdown table of every compared cell and the cells where main is more than --threshold percent
slower. A script that fails in one build is reported and its cells are left out; --save keeps
every run's output, so a rerun with the same folder only runs what is missing.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run_all import ORDER  # noqa: E402

_TIME = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}
_RATE = {"/s": 1.0, "k/s": 1e3, "M/s": 1e6, "G/s": 1e9, "MB/s": 1e6, "GB/s": 1e9}
_CELL = re.compile(r"^\*{0,2}([0-9][0-9,]*(?:\.[0-9]+)?)\s*([a-zA-Zµ/]*)\*{0,2}$")
_PEER = re.compile(
    r"SharedMemory|mp\.|multiprocessing|faster|Manager|private|bytearray|Pipe|zmq|iceoryx|"
    r"tcp|Ray|torch|dict \(",
    re.I,
)
_OURS = re.compile(r"shmipc|\bHeap\b|Heap[ ,(]|channel|Block|topic|value|queue \(", re.I)


def parse_value(cell: str) -> tuple[float, bool] | None:
    """(value, higher_is_better) of a table cell, or None for ratios, labels and blanks."""
    m = _CELL.match(cell.strip())
    if not m:
        return None
    num, unit = float(m.group(1).replace(",", "")), m.group(2)
    if unit in _TIME:
        return num * _TIME[unit], False
    if unit in _RATE:
        return num * _RATE[unit], True
    if unit == "":
        return num, True  # counts per second (dict operations, frames)
    return None  # "x" ratios and anything else


def parse_tables(text: str) -> dict[tuple[str, str, str], tuple[float, bool]]:
    """{(table heading, row label, column header): value} for every numeric cell."""
    cells: dict[tuple[str, str, str], tuple[float, bool]] = {}
    heading = ""
    header: list[str] | None = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#"):
            heading, header = line.lstrip("# ").strip(), None
            continue
        if not (line.startswith("|") and line.endswith("|")):
            header = None
            continue
        parts = [p.strip() for p in line[1:-1].split("|")]
        if header is None:
            header = parts
            continue
        if all(set(p) <= set("-: ") for p in parts):
            continue
        for col, cell in zip(header[1:], parts[1:], strict=False):
            v = parse_value(cell)
            if v is not None:
                cells[(heading, parts[0], col)] = v
    return cells


def ours(key: tuple[str, str, str]) -> bool:
    _, row, col = key
    if _PEER.search(col) or (_PEER.search(row) and not _OURS.search(row)):
        return False
    return bool(_OURS.search(row) or _OURS.search(col) or _OURS.search(key[0]))


def run(python: str, script: str, quick: bool, save: Path | None) -> str:
    """The script's output; "" (and a report on stderr) when it failed. With `save`, the output
    is kept there and reused by a later call with the same path (an interrupted comparison
    resumes where it stopped)."""
    if save is not None and save.exists():
        return save.read_text()
    cmd = [python, str(HERE / script), *(["--quick"] if quick else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent, timeout=3600)
    if proc.returncode != 0:
        print(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
        failures.append(f"{python} {script}")
        return ""
    if save is not None:
        save.write_text(proc.stdout)
    return proc.stdout


failures: list[str] = []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the interpreter with the baseline build")
    ap.add_argument("--main", default=sys.executable, help="the interpreter with this build")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--scripts", default=",".join(ORDER))
    ap.add_argument("--threshold", type=float, default=5.0, help="percent")
    ap.add_argument("--save", type=Path, help="keep (and reuse) each run's output in this folder")
    args = ap.parse_args()
    if args.save:
        args.save.mkdir(parents=True, exist_ok=True)

    best: dict[str, dict[tuple[str, str, str], tuple[float, bool]]] = {"base": {}, "main": {}}
    every: dict[str, dict[tuple[str, str, str], list[float]]] = {"base": {}, "main": {}}
    t0 = time.perf_counter()
    for script in args.scripts.split(","):
        for r in range(args.rounds):
            order = [("base", args.base), ("main", args.main)]
            if r % 2:
                order.reverse()
            for build, python in order:
                short = script.removeprefix("bench_").removesuffix(".py")
                save = args.save / f"{build}-{short}-{r + 1}.txt" if args.save else None
                for (heading, row, col), (v, hib) in parse_tables(
                    run(python, script, args.quick, save)
                ).items():
                    key = (f"{short}: {heading}", row, col)
                    every[build].setdefault(key, []).append(v)
                    old = best[build].get(key)
                    if old is None or (v > old[0] if hib else v < old[0]):
                        best[build][key] = (v, hib)
            print(f"{script} round {r + 1}/{args.rounds} done", file=sys.stderr)

    rows, slower = [], []
    for key in sorted(set(best["base"]) & set(best["main"])):
        if not ours(key):
            continue
        (b, hib), (m, _) = best["base"][key], best["main"][key]
        if b == 0 or m == 0:
            continue
        change = (m / b - 1) * 100 if hib else (b / m - 1) * 100  # > 0: main is faster
        mb, mm = statistics.median(every["base"][key]), statistics.median(every["main"][key])
        med = (mm / mb - 1) * 100 if hib else (mb / mm - 1) * 100
        rows.append((key, b, m, hib, change, med))
        if change < -args.threshold:
            slower.append((key, change))

    def fmt(v: float, hib: bool) -> str:
        return f"{v:,.0f}/s" if hib else f"{v * 1e6:,.2f} µs"

    print(f"best of {args.rounds} rounds per build, --quick={args.quick}, ", end="")
    print(f"{time.perf_counter() - t0:.0f} s\n")
    print("| benchmark | row | column | base | main | main vs base | medians: main vs base |")
    print("|---|---|---|---|---|---|---|")
    for (bench, row, col), b, m, hib, change, med in rows:
        print(
            f"| {bench} | {row} | {col} | {fmt(b, hib)} | {fmt(m, hib)} | {change:+.1f}% "
            f"| {med:+.1f}% |"
        )
    print(f"\n{len(rows)} cells compared; more than {args.threshold:g}% slower in main: ", end="")
    print(len(slower))
    for (bench, row, col), change in slower:
        print(f"- {bench} / {row} / {col}: {change:+.1f}%")
    for f in failures:
        print(f"- failed (its cells are not compared): {f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
