"""The whole benchmark suite in one command (layer, training step, data pipeline, per-epoch probe),
JSON per part, and the wall time of each part (``suite.json``; issue 7 asks for the whole suite in
under 8 minutes on one GPU).

    python -m bench.all --out bench/results          # one GPU; most of the time is torch.compile

Each part also runs alone (``python -m bench.layer`` etc.). Record what you measure, with the card
and date, in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench import data as data_bench
from bench import layer, probe, train_step
from bench.common import environment, print_table, write_json


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--full", action="store_true", help="three layer shapes instead of issue 7's one")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shapes = ["4x64x128x32x32", "2x128x256x16x16", "4x64x512x8x8"] if args.full else ["4x64x128x32x32"]
    parts = {
        "layer": lambda: layer.main(["--shapes", *shapes, "--json", str(out / "layer.json")]),
        "train_step": lambda: train_step.main(["--json", str(out / "train_step.json")]),
        "data": lambda: data_bench.main(["--synthetic", "50000", "--batch-size", "128",
                                         "--json", str(out / "data.json")]),
        "probe": lambda: probe.main(["--arch", "resnet19", "--images", "50000", "--batch-size", "128",
                                     "-T", "2", "--size", "32", "--channels", "3",
                                     "--json", str(out / "probe.json")]),
    }
    rows = []
    for name, run in parts.items():
        start = time.perf_counter()
        run()
        rows.append({"part": name, "seconds": time.perf_counter() - start})
    rows.append({"part": "suite", "seconds": sum(row["seconds"] for row in rows)})
    print_table(rows, ["part", "seconds"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    payload = {"benchmark": "suite", "environment": environment(device), "rows": rows}
    write_json(str(out / "suite.json"), payload)
    print(f"suite finished in {rows[-1]['seconds']:.0f} s; JSON in {out}")
    return payload


if __name__ == "__main__":
    main()
