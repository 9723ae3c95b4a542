"""Host cost of the fused layer: what the CPU spends, and what it launches, per layer and step.

    python -m bench.host [--device cpu|cuda] [--json F]

Outside CUDA graphs every fused layer costs more host time than GPU time (on an H200, 1.5 ms of
host time per layer forward + backward against 0.33 ms of GPU work; docs/benchmarks.md). This
measures the part the library controls, without a GPU: our Triton kernels are replaced by
counters, so a forward + backward of a stack of tiny ``TdBNPLIF`` layers times our Python,
PyTorch's dispatch and autograd, and the small PyTorch ops around the kernels. It reports, per
layer fwd+bwd, the host microseconds (eager and ``torch.compile``; a stack, so that
torch.compile's per-graph cost is shared as in a real network), the eager forward alone (no
autograd graph), the Triton launches, and the PyTorch ops that launch a device kernel in eager
mode (views and allocations excluded). On a GPU (``--device cuda``) the small ops launch real
CUDA kernels; ``python -m bench.tune`` times a real Triton launch there, and ``python -m
bench.dispatch`` what a launch costs the host in front of the launcher (no GPU needed). Stubbed
kernels cannot be traced, so compiled layers here take the opaque custom ops: on CUDA, compiled
graphs normally launch the kernels from inductor's code instead (``bench.tune`` times both
routes with real kernels).
"""

from __future__ import annotations

import collections
import contextlib
import os
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bench.common import environment, layer_stack_parser, print_table, write_json

#: aten ops that launch no device kernel
NO_KERNEL = {"empty.memory_format", "empty_like.default", "empty_strided.default", "new_empty.default",
             "detach.default", "alias.default", "view.default", "_unsafe_view.default", "select.int",
             "slice.Tensor", "unsqueeze.default", "squeeze.dim", "expand.default", "permute.default",
             "as_strided.default", "t.default", "transpose.int"}


class _CountingKernel:
    """Stands in for a Triton kernel: ``kernel[grid](...)`` only counts."""

    def __init__(self):
        self.launches = 0

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches += 1
        return launch


@contextlib.contextmanager
def stubbed_kernels():
    """Replace the fused kernels by launch counters (compiled graphs then take the custom ops,
    which call our launchers); yields them by name."""
    from mpdagl_triton import ops
    from mpdagl_triton.kernels import tdbn_plif as K

    saved = {name: getattr(K, name) for name in K.KERNEL_NAMES}
    saved_route = ops.INDUCTOR_ROUTE
    stubs = {name: _CountingKernel() for name in K.KERNEL_NAMES}
    for name, stub in stubs.items():
        setattr(K, name, stub)
    ops.INDUCTOR_ROUTE = False
    try:
        yield stubs
    finally:
        for name, kernel in saved.items():
            setattr(K, name, kernel)
        ops.INDUCTOR_ROUTE = saved_route


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func).removeprefix("aten.")
        if name not in NO_KERNEL:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def host_us(fn, device: torch.device, seconds: float = 1.0) -> float:
    """Median over 5 rounds of host microseconds per call (one sync per round, none per call)."""
    for _ in range(20):
        fn()
    rounds = []
    for _ in range(5):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 5:
            fn()
            n += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rounds.append((time.perf_counter() - start) / n * 1e6)
    return sorted(rounds)[2]


def measure(device: torch.device, shape=(4, 2, 8, 4, 4), depth: int = 8) -> list[dict]:
    from mpdagl_triton import TdBNPLIF

    torch.manual_seed(0)
    x = torch.randn(shape, device=device, requires_grad=True)
    grad = torch.randn(shape, device=device)
    rows = []
    with stubbed_kernels() as stubs:
        for mode in ("eager", "torch.compile"):
            layers = (TdBNPLIF(shape[2], backend="triton") for _ in range(depth))
            layer = torch.nn.Sequential(*layers).to(device)
            if mode == "torch.compile":
                layer = torch.compile(layer, fullgraph=True)

            def step():  # as in a training step: input grads don't pile up, zero_grad(set_to_none)
                x.grad = None
                layer.zero_grad(set_to_none=True)
                layer(x).backward(grad)

            step()  # compiles
            before = sum(s.launches for s in stubs.values())
            counter = _CountOps()
            if mode == "eager":
                with counter:
                    step()
            else:
                step()
            launches = sum(s.launches for s in stubs.values()) - before
            row = {"mode": mode, "host_us": host_us(step, device) / depth,
                   "triton_launches": launches / depth,
                   "torch_kernels": sum(counter.ops.values()) / depth if mode == "eager" else None}
            if mode == "eager":
                row["ops"] = {name: n / depth for name, n in sorted(counter.ops.items())}

                def forward():
                    with torch.no_grad():
                        layer(x)

                row["forward_us"] = host_us(forward, device) / depth  # the rest is autograd + backward
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> dict:
    args = layer_stack_parser(__doc__).parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # lets backend="triton" take CPU tensors; kernels are stubs
    rows = measure(device, depth=args.depth)
    print_table(rows, ["mode", "host_us", "forward_us", "triton_launches", "torch_kernels"])
    print("eager ops per layer:", ", ".join(f"{n} x{c:g}" for n, c in rows[0]["ops"].items()) or "none")
    payload = {"benchmark": "host", "environment": environment(device), "rows": rows}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
