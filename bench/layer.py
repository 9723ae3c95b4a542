"""One tdBN -> PLIF layer, forward and forward+backward, fused op vs reference vs SpikingJelly.

    python -m bench.layer                      # every implementation, default shapes, fp32 + bf16
    python -m bench.layer --shapes 4x64x128x32x32 --dtypes bf16 --json bench/results/layer.json
    python -m bench.layer --jobs 4             # a process per compiled implementation, 4 compiling at a time

Implementations (those that cannot run on the device are reported as skipped):
  fused              mpdagl_triton.TdBNPLIF, Triton kernels (CUDA)
  fused-compiled     the same inside torch.compile
  reference          the PyTorch reference, eager
  reference-compiled the reference under torch.compile
  spikingjelly       cuDNN BatchNorm2d + SpikingJelly 2.0 multi-step PLIF (Triton), compiled
                     (only when spikingjelly is installed; set SJ_PLIF_CUDA_IMPLEMENTATION=triton)

``fwd_ms`` and ``fwd_bwd_ms`` time one call from an idle GPU, so the host's launch costs count
(a lone layer is host-bound); ``fwd_bwd_graph_ms`` replays the forward + backward captured as
one CUDA graph: the GPU work alone, what a compiled step in reduce-overhead mode pays, and what
the roofline bounds. The roofline column is 8 passes over the activation (stats read, forward
read + write, backward two reads, then two reads + one write) at the copy bandwidth measured in
the same run.

SpikingJelly's rows run in a process of their own, one per shape and dtype: a CUDA graph capture
that fails (its compiled step did, on an H200) leaves the process's RNG and allocator
in capture mode, and every later allocation there fails.

``--stem`` measures the layer as a network's first one runs: its input is one timestep
``[1, B, C, H, W]``, the same at every step (ours: ``timesteps=T``, read in place, the gradient
summed over T by the kernel; the others get ``x.expand(T, ...)``). The roofline then counts 3
passes over the T-step activation (the spikes written, dS read twice) and 5 over the one-step
input (read by each of the four passes, dx written).
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch
from torch import nn

from bench.common import (DTYPES, compile_then_measure, copy_bandwidth_gbs, cuda_graph_ms, environment,
                          peak_memory_bytes, prepare_spikingjelly, print_table, reset_spikingjelly,
                          spikingjelly_plif, time_ms, wait_for_turn, write_json)
from mpdagl_triton import TdBNPLIF, compile_options

DEFAULT_SHAPES = ["4x64x128x32x32", "2x128x256x16x16", "4x64x512x8x8", "10x32x128x48x48"]
COLUMNS = ["impl", "shape", "dtype", "fwd_ms", "fwd_bwd_ms", "fwd_bwd_graph_ms", "peak_mib", "roofline_ms", "note"]
IMPLEMENTATIONS = ["fused", "fused-compiled", "reference", "reference-compiled", "spikingjelly"]
COMPILED = ("fused-compiled", "reference-compiled", "spikingjelly")
ISOLATED = ("spikingjelly",)  # measured in a child process each: see the module docstring


class SpikingJellyLayer(nn.Module):
    """cuDNN batch norm on [T*B, C, H, W] + SpikingJelly's multi-step PLIF with the same dynamics."""

    def __init__(self, channels: int, tau: float = 0.2, vth: float = 0.5):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.neuron = spikingjelly_plif(tau, vth)
        self.surrogate_name = type(self.neuron.surrogate_function).__name__

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # reset before, outside: reset_spikingjelly
        T, B = x.shape[:2]
        return self.neuron(self.bn(x.flatten(0, 1)).unflatten(0, (T, B)))


def build(impl: str, channels: int, device: torch.device, dtype: torch.dtype = torch.float32):
    """The module for ``impl``, or a string saying why it cannot run here."""
    if impl.startswith("fused"):
        if device.type != "cuda":
            return "needs CUDA"
        module = TdBNPLIF(channels, backend="triton").to(device)
    elif impl.startswith("reference"):
        module = TdBNPLIF(channels, backend="torch").to(device)
    else:
        if device.type != "cuda":
            return "needs CUDA"
        try:
            module = SpikingJellyLayer(channels).to(device)
        except ImportError:
            return "spikingjelly not installed"
        prepare_spikingjelly(module, dtype, device)
    if impl in COMPILED:
        module = torch.compile(module, options=compile_options())
    return module


def measure(impl: str, shape: list[int], dtype: torch.dtype, device: torch.device, warmup: int,
            repeats: int, stem: bool = False, turn: str | None = None) -> dict:
    """One implementation at one shape and dtype; in a process of ``common.compile_then_measure``
    it compiles, then waits for its ``turn`` before timing anything."""
    row = {"impl": impl, "shape": "x".join(map(str, shape)), "dtype": str(dtype).removeprefix("torch.")}
    module = build(impl, shape[2], device, dtype)
    if isinstance(module, str):
        row["note"] = module
        return row
    T = shape[0]
    x = torch.randn([1, *shape[1:]] if stem else shape, device=device, dtype=dtype).requires_grad_()
    grad = torch.randn(shape, device=device, dtype=dtype)

    def run():
        if impl == "spikingjelly":
            reset_spikingjelly(module)
        if not stem:
            return module(x)
        if impl == "spikingjelly":
            return module(x.expand(T, *x.shape[1:]))
        return module(x, timesteps=T)

    def forward():
        with torch.no_grad():
            return run()

    def step():
        x.grad = None
        run().backward(grad)

    try:
        forward(), step()  # compiles both graphs (with and without autograd) before any timing
        wait_for_turn(turn)
        row["fwd_ms"] = time_ms(forward, device, warmup, repeats)
        row["fwd_bwd_ms"] = time_ms(step, device, warmup, repeats)
        graph = cuda_graph_ms(step, device, warmup, repeats)
        if isinstance(graph, str):
            row["note"] = graph
        else:
            row["fwd_bwd_graph_ms"] = graph
        peak = peak_memory_bytes(step, device)
        row["peak_mib"] = None if peak is None else peak / 2**20
    except Exception as exc:  # a broken third-party backend must not hide our numbers
        row["note"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    if impl == "spikingjelly" and "fwd_bwd_ms" in row:
        surrogate = f"surrogate {getattr(module, '_orig_mod', module).surrogate_name}"
        row["note"] = f"{row['note']}; {surrogate}" if "note" in row else surrogate
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, help="TxBxCxHxW (spatial optional)")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--impls", nargs="+", default=IMPLEMENTATIONS, choices=IMPLEMENTATIONS)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--stem", action="store_true", help="the input is one timestep, the same at every step")
    parser.add_argument("--jobs", type=int, default=0,
                        help="a process per compiled implementation, shape and dtype: this many compile at a "
                             "time, then each measures alone, in turn")
    parser.add_argument("--turn", help=argparse.SUPPRESS)  # set by the parent: common.wait_for_turn
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    os.environ.setdefault("SJ_PLIF_CUDA_IMPLEMENTATION", "triton")
    items = [(shape_text, dtype_name, impl) for shape_text in args.shapes for dtype_name in args.dtypes
             for impl in args.impls]
    # in processes of their own: SpikingJelly always (see the module docstring), with --jobs every
    # compiled implementation; the rest here, first, while nothing else runs
    own_process = () if args.turn else (COMPILED if args.jobs else ISOLATED)
    bandwidth = None if args.turn else copy_bandwidth_gbs(device)  # the parent's: measured alone
    measured = {}

    def add(item: tuple[str, str, str], row: dict) -> None:
        shape_text, dtype_name, _ = item
        shape, dtype = [int(v) for v in shape_text.split("x")], DTYPES[dtype_name]
        roofline = None
        if bandwidth:
            passes = 3 + 5 / shape[0] if args.stem else 8
            roofline = passes * math.prod(shape) * dtype.itemsize / (bandwidth * 1e9) * 1e3
        measured[item] = {**row, "roofline_ms": roofline}
        print_table([measured[item]], COLUMNS)

    for item in items:
        if item[2] not in own_process:
            add(item, measure(item[2], [int(v) for v in item[0].split("x")], DTYPES[item[1]], device,
                              args.warmup, args.repeats, args.stem, args.turn))
    apart = [item for item in items if item[2] in own_process]
    commands = [[sys.executable, "-m", "bench.layer", "--device", args.device, "--impls", impl, "--shapes", shape_text,
                 "--dtypes", dtype_name, "--warmup", str(args.warmup), "--repeats", str(args.repeats),
                 *["--stem"] * args.stem] for shape_text, dtype_name, impl in apart]

    def arrived(position: int, result: dict | str) -> None:
        shape_text, dtype_name, impl = apart[position]
        if isinstance(result, str):
            result = {"rows": [{"impl": impl, "shape": shape_text, "note": f"failed: {result}",
                                "dtype": str(DTYPES[dtype_name]).removeprefix("torch.")}]}
        add(apart[position], result["rows"][0])

    parallel = None
    if commands:
        _, seconds = compile_then_measure(commands, max(1, args.jobs), on_result=arrived)
        parallel = {"processes": len(commands), "seconds": seconds}
        print(f"compiled {len(commands)} in processes of their own, {max(1, args.jobs)} at a time, in "
              f"{seconds:.0f} s; then each measured alone in its process")
    rows = [measured[item] for item in items]
    print()
    env = environment(device)
    print(f"{env['device']}  torch {env['torch']}  triton {env['triton']}  "
          f"copy bandwidth {bandwidth and round(bandwidth)} GB/s")
    print_table(rows, COLUMNS)
    payload = {"benchmark": "layer", "environment": env, "copy_bandwidth_gbs": bandwidth,
               "parallel_compile": parallel, "rows": rows}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
