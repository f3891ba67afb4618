"""Runs every benchmark in one go; writes benchmarks/RESULTS.md, docs/benchmarks.md and plots.

    python benchmarks/run_all.py            # full runs (tens of minutes on 2 cores)
    python benchmarks/run_all.py --quick    # a few minutes

Each benchmark script compares shmipc with its peers in the same run and prints markdown
tables with ratios; this collects their output verbatim. The size sweep (bench_sweep.py)
feeds two log-log plots: round-trip latency and streaming throughput against message size,
shmipc against each peer.
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DOCS_IMG = ROOT / "docs" / "img"
ORDER = [
    "bench_buffers.py",
    "bench_heap.py",
    "bench_channels.py",
    "bench_values.py",
    "bench_queue.py",
    "bench_dict.py",
    "bench_sweep.py",
]


def describe(script: Path) -> str:
    doc = ast.get_docstring(ast.parse(script.read_text())) or script.stem
    return doc.strip().split("\n\n")[0].replace("\n", " ")


def run(script: Path, quick: bool, extra: list[str]) -> tuple[str, float, int]:
    cmd = [sys.executable, str(script), *(["--quick"] if quick else []), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=3 * 3600)
    out = proc.stdout.strip()
    if proc.returncode != 0:
        out += f"\n\n(exit code {proc.returncode})\n```\n{proc.stderr.strip()[-2000:]}\n```"
    return out, time.perf_counter() - t0, proc.returncode


def plot(sweep: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for key, ylabel, fname, scale in [
        ("latency_s", "round trip (µs, median)", "latency.png", 1e6),
        ("throughput_Bps", "one-way throughput (MB/s)", "throughput.png", 1e-6),
    ]:
        fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
        for name, res in sweep["results"].items():
            pts = sorted((int(k), v) for k, v in res[key].items())
            if not pts:
                continue
            xs, ys = zip(*pts, strict=True)
            style = "-o" if name.startswith("shmipc") else "--s"
            ax.plot(xs, [y * scale for y in ys], style, label=name, markersize=4)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("message size (bytes)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel.split(' (')[0]} vs message size")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.text(0.01, 0.01, sweep["machine"], fontsize=6, alpha=0.7)
        fig.tight_layout()
        path = out_dir / fname
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter runs of every benchmark")
    ap.add_argument("--only", nargs="*", help="script names to run (default: all)")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from _common import machine

    scripts = [HERE / s for s in ORDER if (HERE / s).exists()]
    scripts += sorted(p for p in HERE.glob("bench_*.py") if p.name not in ORDER)
    if args.only:
        scripts = [s for s in scripts if s.name in args.only or s.stem in args.only]
    sections = []
    images: list[Path] = []
    failed = 0
    for script in scripts:
        print(f"running {script.name} ...", file=sys.stderr, flush=True)
        extra: list[str] = []
        tmp = None
        if script.name == "bench_sweep.py":
            tmp = Path(tempfile.mkstemp(suffix=".json")[1])
            extra = ["--json", str(tmp)]
        out, secs, rc = run(script, args.quick, extra)
        failed += rc != 0
        if tmp is not None and tmp.stat().st_size:
            images = plot(json.loads(tmp.read_text()), DOCS_IMG)
        cmd = f"python benchmarks/{script.name}{' --quick' if args.quick else ''}"
        sections.append(
            f"## {script.stem.removeprefix('bench_')} — `{cmd}`\n\n{describe(script)}\n\n"
            f"{out}\n\n_{secs:.0f} s_\n"
        )
    head = (
        "# Benchmark results\n\n"
        f"Machine: {machine()}. Generated {dt.date.today()} by "
        f"`python benchmarks/run_all.py{' --quick' if args.quick else ''}`.\n"
        "Every table compares shmipc with its peers **in the same run** of the same script. The\n"
        "VM is shared and noisy: ratios are more stable than absolute times.\n"
    )
    notes = sorted(p.name for p in HERE.glob("RESULTS_*.md"))
    if notes:
        head += (
            "\nWrite-ups with more runs and how each row is measured: "
            + ", ".join(f"`benchmarks/{n}`" for n in notes)
            + ". The C++ one-way ring latency is `bench_ring_latency` in the C++ build.\n"
        )
    body = "\n".join(sections)
    (HERE / "RESULTS.md").write_text(head + "\n" + body)
    plots = "".join(f"![{p.stem}](img/{p.name})\n\n" for p in images)
    (ROOT / "docs" / "benchmarks.md").write_text(
        head + ("\n## Plots\n\n" + plots if plots else "") + "\n" + body
    )
    print(f"wrote RESULTS.md, docs/benchmarks.md, {len(images)} plot(s)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
