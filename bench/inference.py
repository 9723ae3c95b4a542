"""Evaluation throughput: the inference path against the op's eval route, the training-mode
forward and the ANN floor's evaluation, ResNet-19 on random 32x32 images.

    python -m bench.inference                          # T=2, B=16, fp32, on one CPU thread
    python -m bench.inference --batch-size 256 --dtype bf16 --device cuda --json F

Implementations (eager, no torch.compile):
  fold        eval mode under torch.no_grad(): tdBN folded into each convolution, forward-only LIF
              (what `mpdagl eval` and `load(...)` models run on the reference backend)
  affine      the same, tdBN as a per-channel scale and shift instead of folded
  op-eval     eval mode under torch.no_grad() through the fused op's eval route (running
              statistics): the reference on the CPU, the Triton kernels on a GPU
  train-fwd   the training-mode forward (batch statistics, recording autograd)
  ann-eval    the ANN floor (BatchNorm + ReLU in place of every neuron) in eval mode, no_grad

Reported: ms per batch (the median over --repeats rounds in which the implementations take turns,
each batch waited for) and images/s. On a GPU the
inference paths apply only to the reference backend; the Triton backend's eval route is op-eval.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from bench.common import environment, print_table, time_ms, write_json
from bench.train_step import build
from mpdagl_triton import layers

IMPLEMENTATIONS = ["fold", "affine", "op-eval", "train-fwd", "ann-eval"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def runner(impl: str, T: int, B: int, size: int, dtype: torch.dtype, device: torch.device):
    """One evaluation batch of ``impl`` as a call."""
    torch.manual_seed(0)
    net = build("ann" if impl == "ann-eval" else "mpdagl", T, device).to(device=device, dtype=dtype)
    images = torch.rand(B, 3, size, size, device=device, dtype=dtype)
    if impl == "train-fwd":
        net.train()
        return lambda: net(images)
    net.eval()
    path = {"fold": "fold", "affine": "affine"}.get(impl, "op")

    def step():
        previous, layers.INFERENCE_PATH = layers.INFERENCE_PATH, path
        try:
            with torch.no_grad():
                net(images)
        finally:
            layers.INFERENCE_PATH = previous
    return step


def measure(impls: list[str], T: int, B: int, size: int, dtype: torch.dtype, device: torch.device,
            warmup: int, repeats: int) -> list[dict]:
    """Rows of ms per batch: the implementations take turns, one batch each per round, so that a
    machine shared with other work slows them alike; the median over ``repeats`` rounds."""
    steps = {impl: runner(impl, T, B, size, dtype, device) for impl in impls}
    times: dict[str, list[float]] = {impl: [] for impl in impls}
    for round_ in range(warmup + repeats):
        for impl, step in steps.items():
            ms = time_ms(step, device, 0, 1)
            if round_ >= warmup:
                times[impl].append(ms)
    rows = []
    for impl in impls:
        ms = statistics.median(times[impl])
        rows.append({"impl": impl, "T": T, "B": B, "dtype": str(dtype).removeprefix("torch."), "ms": ms,
                     "images_per_s": B / ms * 1e3})
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-T", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--size", type=int, default=32, help="image side (default 32)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--impls", nargs="+", choices=IMPLEMENTATIONS, default=IMPLEMENTATIONS)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads (default 1: steadier on a machine shared with other work)")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    rows = measure(args.impls, args.T, args.batch_size, args.size, DTYPES[args.dtype], device, args.warmup,
                   args.repeats)
    floor = next((r["ms"] for r in rows if r["impl"] == "ann-eval"), None)
    for row in rows:
        row["vs_ann"] = row["ms"] / floor if floor else None
    print_table(rows, ["impl", "T", "B", "dtype", "ms", "images_per_s", "vs_ann"])
    payload = {"environment": {**environment(device), "threads": torch.get_num_threads()}, "rows": rows}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
