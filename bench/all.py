"""The whole benchmark suite in one command (layer, training step, data pipeline, per-epoch probe),
JSON per part, and the wall time of each part (``suite.json``).

    python -m bench.all --out bench/results          # one GPU; most of the time is torch.compile

Each part runs in a process of its own, as it would alone (``python -m bench.layer`` etc.):
SpikingJelly, measured in the layer part, changes dynamo and torch.compile's cache key for the
rest of its process. The layer and training-step parts give everything they compile a process of
its own, ``--jobs`` compiling at a time; once none is compiling, each measures in turn, alone,
with what it compiled (``common.compile_then_measure``): compiling one step takes seconds to half
a minute, so compiling in parallel is what keeps the suite short.
Record what you measure, with the card, date and commit, in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.common import environment, print_table, write_json


def parts(out: Path, full: bool, jobs: int) -> dict[str, list[str]]:
    """Each part's module and arguments."""
    shapes = ["4x64x128x32x32", "2x128x256x16x16", "4x64x512x8x8"] if full else ["4x64x128x32x32"]
    return {
        "layer": ["bench.layer", "--jobs", str(jobs), "--shapes", *shapes, "--json", str(out / "layer.json")],
        "train_step": ["bench.train_step", "--jobs", str(jobs), "--json", str(out / "train_step.json")],
        "data": ["bench.data", "--synthetic", "50000", "--batch-size", "128",
                 *(["--step-ms", "10"] if torch.cuda.is_available() else []), "--json", str(out / "data.json")],
        "probe": ["bench.probe", "--arch", "resnet19", "--images", "50000", "--batch-size", "128", "-T", "2",
                  "--size", "32", "--channels", "3", "--json", str(out / "probe.json")],
    }


def run_part(command: list[str]) -> int:
    """``python -m <command>`` in a process of its own; its exit status."""
    return subprocess.run([sys.executable, "-m", *command]).returncode


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--full", action="store_true", help="three layer shapes instead of one")
    parser.add_argument("--jobs", type=int, default=min(8, max(1, (os.cpu_count() or 2) // 2)),
                        help="processes compiling at once in the layer and training-step parts "
                             "(0: one process compiles and measures everything in turn)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, command in parts(out, args.full, args.jobs).items():
        start = time.perf_counter()
        status = run_part(command)
        rows.append({"part": name, "seconds": time.perf_counter() - start,
                     "note": None if status == 0 else f"exit status {status}"})
    rows.append({"part": "suite", "seconds": sum(row["seconds"] for row in rows), "note": None})
    print_table(rows, ["part", "seconds", "note"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    payload = {"benchmark": "suite", "environment": environment(device), "jobs": args.jobs, "rows": rows}
    write_json(str(out / "suite.json"), payload)
    print(f"suite finished in {rows[-1]['seconds']:.0f} s; JSON in {out}")
    return payload


if __name__ == "__main__":
    main()
