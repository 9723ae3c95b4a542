"""The whole benchmark suite in one command (layer, training step, data pipeline, per-epoch probe),
JSON per part.

    python -m bench.all --out bench/results          # one GPU; most of the time is torch.compile

Each part also runs alone (``python -m bench.layer`` etc.). Record what you measure, with the card
and date, in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench import data as data_bench
from bench import layer, probe, train_step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--full", action="store_true", help="three layer shapes instead of issue 7's one")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    shapes = ["4x64x128x32x32", "2x128x256x16x16", "4x64x512x8x8"] if args.full else ["4x64x128x32x32"]
    layer.main(["--shapes", *shapes, "--json", str(out / "layer.json")])
    train_step.main(["--json", str(out / "train_step.json")])
    data_bench.main(["--synthetic", "50000", "--batch-size", "128", "--json", str(out / "data.json")])
    probe.main(["--arch", "resnet19", "--images", "50000", "--batch-size", "128", "-T", "2", "--size", "32",
                "--channels", "3", "--json", str(out / "probe.json")])
    print(f"suite finished in {time.perf_counter() - start:.0f} s; JSON in {out}")


if __name__ == "__main__":
    main()
