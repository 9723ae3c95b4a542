"""Launch-parameter sweep of the fused kernels, kernel by kernel, on a GPU.

    python -m bench.tune --json bench/results/tune.json

For each shape it times the statistics, forward and backward launchers of
:mod:`mpdagl_triton.kernels.tdbn_plif` alone (``triton.testing.do_bench``, median, rotating over
three input sets so that nothing is served from L2) under several settings of the module's launch
parameters, and reports the achieved bandwidth of each against a device copy measured in the same
run. It also times the whole layer (``TdBNPLIF`` forward + backward) eagerly and as a replayed CUDA
graph: the difference is host-side launch overhead, not GPU work; the host cost of a compiled
layer on both routes (kernels launched by inductor, or through the custom ops); and the library's
own host path per layer with the Triton launches stubbed (``bench.host``).
"""

from __future__ import annotations

import argparse
import math

import torch

from bench import host
from bench.common import copy_bandwidth_gbs, cuda_graph_ms, environment, print_table, write_json
from mpdagl_triton import TdBNPLIF, ops
from mpdagl_triton.kernels import tdbn_plif as K

DEFAULTS = {name: getattr(K, name) for name in K.KNOBS}
DEFAULT_ROUTE = ops.INDUCTOR_ROUTE
#: name -> launch parameters changed from the module's defaults
CONFIGS = {
    "default": {},
    "small": {"FORWARD_TILE": 1024, "BACKWARD_BUDGET": 1024},
    "large": {"FORWARD_TILE": 4096, "BACKWARD_BUDGET": 4096},
    "all-8w": {"EIGHT_WARPS_FROM": 256},
    "stats-256": {"STATS_PROGRAMS": 256},
    "stats-4096": {"STATS_PROGRAMS": 4096},
    "stats-tile/2": {"STATS_BUDGET": K.STATS_BUDGET // 2},
    "bwd-1024": {"BACKWARD_PROGRAMS": 1024},
    "bwd-8192": {"BACKWARD_PROGRAMS": 8192},
    "bwd-one-block": {"BACKWARD_PROGRAMS": 1 << 40},  # one row block per program
    "cl-k32": {"CHANNELS_LAST_BLOCK_K": 32, "CHANNELS_LAST_WIDE_FROM": 1 << 30},
    "cl-k64": {"CHANNELS_LAST_WIDE_FROM": 1 << 30},
    "cl-k128": {"CHANNELS_LAST_BLOCK_K": 128, "CHANNELS_LAST_WIDE_FROM": 1 << 30},
}
#: (shape, dtype, channels_last, configs): the ResNet-19 stage-1 layer at T4 B64 and T2 B128
#: (the training-step benchmark runs them channels-last) and a deep, narrow stage-3 layer
BACKWARD_SWEEP = ["default", "bwd-1024", "bwd-8192", "bwd-one-block"]
CASES = [
    ("4x64x128x32x32", "fp32", False, [*BACKWARD_SWEEP, "small", "large", "stats-256", "stats-4096"]),
    ("4x64x128x32x32", "bf16", True, [*BACKWARD_SWEEP, "stats-tile/2", "stats-256", "cl-k32", "all-8w"]),
    ("2x128x128x32x32", "bf16", True, [*BACKWARD_SWEEP, "stats-tile/2", "stats-4096", "cl-k32"]),
    ("2x128x128x32x32", "bf16", False, BACKWARD_SWEEP),
    ("4x64x512x8x8", "bf16", True, [*BACKWARD_SWEEP, "cl-k64"]),
]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def apply(config: str) -> None:
    for name, value in {**DEFAULTS, **CONFIGS[config]}.items():
        setattr(K, name, value)


WIDTHS = K.Widths("mpdagl", 1.0, 1e-3)  # the default width rule


def make_inputs(shape, dtype, channels_last, device, sets: int = 3):
    T, B, C = shape[:3]
    out = []
    for _ in range(sets):
        x = torch.randn(shape, device=device, dtype=dtype) * 1.5 + 0.3
        grad = torch.randn(shape, device=device, dtype=dtype)
        if channels_last:
            x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (T, B))
            grad = grad.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (T, B))
        out.append((x, grad))
    params = {
        "gamma": torch.rand(C, device=device) + 0.5,
        "beta": torch.randn(C, device=device) * 0.3,
        "rho": torch.tensor(-1.386, device=device),  # tau = 0.2
    }
    return out, params


def time_kernels(shape, dtype, channels_last, config, device, bandwidth) -> dict:
    import triton.testing

    apply(config)
    sets, p = make_inputs(shape, dtype, channels_last, device)
    layout = K.Layout.of(sets[0][0])
    outs = [torch.empty_like(x) for x, _ in sets]
    dxs = [torch.empty_like(x) for x, _ in sets]
    mean, var = K.batch_stats(sets[0][0], layout)
    kappas = K.forward(sets[0][0], layout, outs[0], p["gamma"], p["beta"], p["rho"], 0.0, None, mean,
                       var, 1e-5, 0.5, 1.0, WIDTHS)
    counter = [0]

    def pick():
        counter[0] = (counter[0] + 1) % len(sets)
        return counter[0]

    def stats():
        K.batch_stats(sets[pick()][0], layout)

    def forward():
        i = pick()
        K.forward(sets[i][0], layout, outs[i], p["gamma"], p["beta"], p["rho"], 0.0, None, mean, var,
                  1e-5, 0.5, 1.0, WIDTHS)

    def backward():
        i = pick()
        x, grad = sets[i]
        K.backward(grad, x, layout, dxs[i], None, p["gamma"], p["beta"], p["rho"], 0.0, None, mean,
                   var, kappas, 1e-5, 0.5, 1.0, "rect", True)

    row = {"shape": "x".join(map(str, shape)), "dtype": str(dtype).removeprefix("torch."),
           "layout": "channels_last" if channels_last else "nchw", "config": config}
    pass_bytes = math.prod(shape) * dtype.itemsize
    for name, fn, passes in (("stats", stats, 1), ("forward", forward, 2), ("backward", backward, 5)):
        ms = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
        row[f"{name}_ms"] = ms
        row[f"{name}_gbs"] = passes * pass_bytes / (ms * 1e-3) / 1e9
    row["total_ms"] = row["stats_ms"] + row["forward_ms"] + row["backward_ms"]
    row["roofline_ms"] = 8 * pass_bytes / (bandwidth * 1e9) * 1e3
    apply("default")
    return row


def time_layer(shape, dtype, channels_last, device) -> dict:
    """The whole TdBNPLIF forward + backward: eager, and replayed as one CUDA graph."""
    sets, _ = make_inputs(shape, dtype, channels_last, device, sets=1)
    x, grad = sets[0]
    x.requires_grad_()
    layer = TdBNPLIF(shape[2], backend="triton").to(device)

    def step():
        x.grad = None
        layer(x).backward(grad)

    import triton.testing

    row = {"shape": "x".join(map(str, shape)), "dtype": str(dtype).removeprefix("torch."),
           "layout": "channels_last" if channels_last else "nchw"}
    row["eager_ms"] = triton.testing.do_bench(step, warmup=25, rep=100, return_mode="median")
    graph = cuda_graph_ms(step, device, warmup=25, repeats=100)
    row["graph_ms" if isinstance(graph, float) else "note"] = graph
    return row


def host_overheads(device: torch.device) -> list[dict]:
    """Host microseconds per call on a tiny layer, where the GPU has next to nothing to do: what a
    Triton launch, a PyTorch op and the whole layer cost the CPU (CUDA graphs remove all of it);
    compiled, with the kernels launched by inductor (the default on CUDA; through Triton's launcher,
    torch's default for user-defined kernels, and through inductor's static launcher, which
    ``compile_options`` asks for) and through the opaque custom ops (``ops.INDUCTOR_ROUTE = False``)."""
    sets, p = make_inputs([4, 2, 8, 4, 4], torch.float32, False, device, sets=1)
    x, grad = sets[0]
    layout = K.Layout.of(x)
    out = torch.empty_like(x)
    mean, var = K.batch_stats(x, layout)
    layer = TdBNPLIF(8, backend="triton").to(device)
    xg = x.clone().requires_grad_()

    def compiled_layer_us(inductor_launch: bool, static_launch: bool = True) -> float:
        ops.INDUCTOR_ROUTE = inductor_launch  # read (and guarded on) while dynamo traces
        try:
            torch._dynamo.reset()
            # compiled in this process, whose options then pick the launcher (in inductor's worker
            # processes one environment variable decides, for the whole run: ops.compile_options)
            options = {**(ops.compile_options() if static_launch else {}), "compile_threads": 1}
            compiled = torch.compile(TdBNPLIF(8, backend="triton").to(device), fullgraph=True,
                                     options=options)
            return host.host_us(lambda: compiled(xg).backward(grad), device)
        finally:
            ops.INDUCTOR_ROUTE = DEFAULT_ROUTE

    def forward_kernel():
        return K.forward(x, layout, out, p["gamma"], p["beta"], p["rho"], 0.0, None, mean, var, 1e-5, 0.5,
                         1.0, WIDTHS)

    kappas, dx = forward_kernel(), torch.empty_like(x)

    def no_grad_forward():
        with torch.no_grad():
            layer(xg)

    # eager fwd+bwd in parts: which of them holds the host time (on an H200: 1.5 ms per layer call,
    # of which stubbed kernels explained half)
    calls = {
        "triton forward-kernel launch": forward_kernel,
        "triton statistics (2 launches)": lambda: K.batch_stats(x, layout),
        "triton backward (3 launches)": lambda: K.backward(grad, x, layout, dx, None, p["gamma"], p["beta"],
                                                           p["rho"], 0.0, None, mean, var, kappas, 1e-5, 0.5,
                                                           1.0, "rect", True),
        "torch add_": lambda: out.add_(1.0),
        "layer forward, eager, no grad": no_grad_forward,
        "layer forward, eager (autograd graph kept)": lambda: layer(xg),
        "layer fwd+bwd, eager": lambda: layer(xg).backward(grad),
    }
    rows = [{"call": name, "host_us": host.host_us(fn, device)} for name, fn in calls.items()]
    rows.append({"call": "layer fwd+bwd, torch.compile, inductor launches (Triton's launcher)",
                 "host_us": compiled_layer_us(True, static_launch=False)})
    rows.append({"call": "layer fwd+bwd, torch.compile, inductor launches (static launcher)",
                 "host_us": compiled_layer_us(True)})
    rows.append({"call": "layer fwd+bwd, torch.compile, custom ops", "host_us": compiled_layer_us(False)})
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json")
    parser.add_argument("--quick", action="store_true", help="default configuration only")
    args = parser.parse_args(argv)
    device = torch.device("cuda")
    bandwidth = copy_bandwidth_gbs(device)
    print(f"copy bandwidth {bandwidth:.0f} GB/s")
    columns = ["shape", "dtype", "layout", "config", "stats_ms", "forward_ms", "backward_ms", "total_ms",
               "roofline_ms", "stats_gbs", "forward_gbs", "backward_gbs"]
    overheads = host_overheads(device)
    print_table(overheads, ["call", "host_us"])
    library_host = host.measure(device)  # our host path per layer, Triton launches stubbed
    print_table(library_host, ["mode", "host_us", "triton_launches", "torch_kernels"])
    rows, layers = [], []
    for shape_text, dtype_name, channels_last, configs in CASES:
        shape = [int(v) for v in shape_text.split("x")]
        dtype = DTYPES[dtype_name]
        for config in (["default"] if args.quick else configs):
            try:
                row = time_kernels(shape, dtype, channels_last, config, device, bandwidth)
            except Exception as exc:
                row = {"shape": shape_text, "dtype": dtype_name, "config": config,
                       "note": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"}
                columns_now = ["shape", "dtype", "config", "note"]
                print_table([row], columns_now)
            else:
                print_table([row], columns)
            rows.append(row)
        layers.append(time_layer(shape, dtype, channels_last, device))
        print_table(layers[-1:], ["shape", "dtype", "layout", "eager_ms", "graph_ms", "note"])
        write_json(args.json, {"benchmark": "tune", "environment": environment(device),
                               "copy_bandwidth_gbs": bandwidth, "host_overheads": overheads,
                               "library_host": library_host,
                               "kernels": rows, "layer": layers})
    print()
    print_table(rows, columns)
    print_table(layers, ["shape", "dtype", "layout", "eager_ms", "graph_ms", "note"])
    print_table(overheads, ["call", "host_us"])
    return {"host_overheads": overheads, "library_host": library_host, "kernels": rows, "layer": layers}


if __name__ == "__main__":
    main()
