"""A whole ResNet-19 training step: ours vs the ANN floor vs SpikingJelly vs the compiled reference.

    python -m bench.train_step                       # the default settings, bf16 autocast
    python -m bench.train_step --full                # both settings x fp32/bf16 x NCHW/channels_last
    python -m bench.train_step --json bench/results/train_step.json
    python -m bench.train_step --jobs 4              # a process per step, 4 compiling at a time

Implementations (all torch.compile'd, same convolutions on T*B images):
  mpdagl        our ResNet-19, fused Triton tdBN -> PLIF
  reference     our ResNet-19 on the PyTorch reference neuron
  ann           the same network with BatchNorm + ReLU in place of every neuron: the floor
  spikingjelly  cuDNN BatchNorm + SpikingJelly 2.0 multi-step PLIF (Triton), when installed

A step is forward, cross entropy, backward and an SGD update, on random 32x32 images; ``layout``
is the parameters' and the images' (all three networks run their activations channels-last on
CUDA from the stem on, ``models.blocks.Stem``, as inductor runs the ANN's convolutions). Reported:
ms per step with steps back to back as a training loop runs them (``ms``, and ``images_per_s``
and ``vs_ann`` from it), one step from an idle GPU to its end (``latency_ms``: the host's issuing
plus the GPU work left after it), the peak memory
allocated during a step, the host time to issue one step from an idle GPU (``host_ms``: near
``ms`` means host-bound), and for ours whether a step syncs with the host (CUDA's sync debug mode
set to error). ``--profile N`` adds a profile of N steps (``profile``): the GPU time by kernel
family and the kernels launched per step (CUDA), and
on any device the host's time by family (our launches, inductor's, the CUDA API, the Python of the
compiled graphs, autograd, the optimizer) with the calls that launch work: where a step's time
goes next to the floor's, on the GPU and on the host. ``compile_s`` is each first step's wall
time: most of this benchmark's time is compilation. ``--jobs N`` gives every step a process of its
own: N compile at a time, and once none is compiling each measures in turn, alone on the machine,
with what it compiled (``common.compile_then_measure``).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from bench.common import (back_to_back_ms, compile_then_measure, environment, prepare_spikingjelly, print_table,
                          reset_spikingjelly, spikingjelly_plif, synchronize, time_ms, wait_for_turn, write_json)
from mpdagl_triton import models
from mpdagl_triton.kernels.tdbn_plif import KERNEL_NAMES
from mpdagl_triton.layers import TdBNPLIF
from mpdagl_triton import ops
from mpdagl_triton.ops import compile_options, compiled_kernel_launchers

STATIC_LAUNCH = True  # our kernels on inductor's static launcher (--triton-launcher: Triton's)

#: (name, T, B, channels_last): T4 B64 channels-last, T2 B128 NCHW and T2 B128 channels-last
SETTINGS = {"t4b64": (4, 64, True), "t2b128": (2, 128, False), "t2b128cl": (2, 128, True)}
IMPLEMENTATIONS = ["mpdagl", "reference", "ann", "spikingjelly"]
#: without --settings: ours and its floor at all three, SpikingJelly at two, the compiled reference
#: at T2 B128 NCHW
DEFAULT_SETTINGS = {"mpdagl": list(SETTINGS), "ann": list(SETTINGS), "spikingjelly": ["t4b64", "t2b128"],
                    "reference": ["t2b128"]}
#: with --jobs, the slowest to compile start first (on an H100 the reference's first step took
#: 22-29 s even from torch.compile's caches, SpikingJelly's 10-12 s, ours and the ANN's 2-4 s)
SLOWEST_TO_COMPILE = ["reference", "spikingjelly", "mpdagl", "ann"]


def settings_of(impl: str, chosen: list[str] | None) -> list[str]:
    """The settings ``impl`` is measured at: those chosen, else its default."""
    return chosen or DEFAULT_SETTINGS[impl]


class AnnNeuron(nn.Module):
    """BatchNorm over T*B images + ReLU: what an ANN does where we put a spiking neuron."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn2d, self.bn1d = nn.BatchNorm2d(channels), nn.BatchNorm1d(channels)

    def forward(self, x, residual=None, skip=None, timesteps=None):
        if timesteps is not None:  # the stem's one timestep, the input at every step
            x = x.expand(timesteps, *x.shape[1:])
        folded = x.flatten(0, 1)
        y = (self.bn2d if folded.dim() == 4 else self.bn1d)(folded)
        out = F.relu(y).unflatten(0, x.shape[:2])
        return out if skip is None else out + skip


class SpikingJellyNeuron(nn.Module):
    """cuDNN BatchNorm + SpikingJelly's multi-step PLIF with our dynamics (hard reset, tau = 0.2).
    Its state is reset before each step, outside the compiled model (``reset_spikingjelly``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn2d, self.bn1d = nn.BatchNorm2d(channels), nn.BatchNorm1d(channels)
        self.node = spikingjelly_plif()

    def forward(self, x, residual=None, skip=None, timesteps=None):
        if timesteps is not None:
            x = x.expand(timesteps, *x.shape[1:])
        folded = x.flatten(0, 1)
        y = (self.bn2d if folded.dim() == 4 else self.bn1d)(folded)
        out = self.node(y.unflatten(0, x.shape[:2]))
        return out if skip is None else out + skip


def swap_neurons(model: nn.Module, make) -> nn.Module:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, TdBNPLIF):
                setattr(parent, name, make(child.channels))
    return model


def build(impl: str, T: int, device: torch.device, dtype: torch.dtype = torch.float32):
    if impl == "mpdagl":
        return models.create("resnet19", 10, T, backend="triton" if device.type == "cuda" else "torch")
    if impl == "reference":
        return models.create("resnet19", 10, T, backend="torch")
    net = models.create("resnet19", 10, T, backend="torch")
    if impl == "ann":
        return swap_neurons(net, AnnNeuron)
    try:
        net = swap_neurons(net, SpikingJellyNeuron)
    except ImportError:
        return "spikingjelly not installed"
    prepare_spikingjelly(net, dtype, device)
    return net


def host_syncs(step, device: torch.device) -> str:
    """'none' when a step runs with CUDA's sync debug mode set to error, else what synced."""
    if device.type != "cuda":
        return "n/a (CPU)"
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
        return "none"
    except RuntimeError as exc:
        return str(exc).splitlines()[0][:120]
    finally:
        torch.cuda.set_sync_debug_mode("default")


def host_ms(step, device: torch.device, repeats: int) -> float:
    """Median wall time for the host to issue one step, starting from an idle GPU. Close to the
    step's ms means the step is host-bound: the GPU waits for launches, not the other way round."""
    samples = []
    for _ in range(repeats):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        samples.append((time.perf_counter() - start) * 1e3)
    torch.cuda.synchronize(device)
    return statistics.median(samples)


#: kernel-name fragments -> family, first match wins (inductor's fused kernels are "triton_*")
KERNEL_FAMILIES = [
    ("ours", KERNEL_NAMES),
    ("spikingjelly", ("plif", "lif_")),
    ("conv", ("conv", "gemm", "cutlass", "xmma", "sm90", "sm80", "implicit", "wgrad", "dgrad", "cudnn")),
    ("batchnorm", ("batch_norm", "bn_", "welford")),
    ("inductor", ("triton_",)),
]


def kernel_family(name: str) -> str:
    lowered = name.lower()
    return next((family for family, parts in KERNEL_FAMILIES if any(p in lowered for p in parts)), "other")


#: host-side profiler event names -> family, first match wins. Self time per family says where the
#: host's time per step goes; "compiled graph" is the Python of torch.compile's generated wrappers
HOST_FAMILIES = [
    ("CUDA API", lambda name: re.match(r"cu(da)?[A-Z]", name) is not None),
    ("our kernel launches", lambda name: any(k in name for k in KERNEL_NAMES)),
    ("inductor kernel launches", lambda name: name.startswith("triton_")),
    ("compiled graph", lambda name: name.startswith(("## Call CompiledFxGraph", "CompiledFunction",
                                                     "Torch-Compiled Region", "TorchDynamo"))),
    ("autograd", lambda name: name.startswith(("autograd::", "torch::autograd::"))),
    ("optimizer", lambda name: name.startswith("Optimizer.")),
    ("aten", lambda name: name.startswith("aten::")),
]
#: runtime and driver calls that put one kernel (or a whole CUDA graph) on a stream
LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch")


def host_family(name: str) -> str:
    return next((family for family, matches in HOST_FAMILIES if matches(name)), "other")


def summarize_host(events, steps: int) -> dict:
    """Host time per step by family from ``(name, self_us, count)`` of every profiled host event."""
    families: dict[str, dict] = {}
    launches = 0.0
    for name, self_us, count in events:
        family = families.setdefault(host_family(name), {"ms": 0.0, "events": 0.0})
        family["ms"] += self_us / 1e3 / steps
        family["events"] += count / steps
        if name in LAUNCH_CALLS:
            launches += count / steps
    top = sorted(events, key=lambda e: -e[1])[:10]
    return {"host_profiled_ms": sum(f["ms"] for f in families.values()), "launch_calls": launches,
            "families": families,
            "top": [{"event": name[:90], "ms": self_us / 1e3 / steps, "per_step": count / steps}
                    for name, self_us, count in top]}


def step_profile(step, steps: int, device: torch.device) -> dict:
    """Where a step's time goes (torch.profiler over ``steps`` steps): on CUDA the GPU time by
    kernel family and the 8 costliest kernels (``gpu_ms``, ``families``, ``top``, ``gpu_kernels``
    per step); everywhere the host's self time by family, the calls that launch work and the 10
    costliest host events (``host``). The profiler adds its own cost to every host event: compare
    implementations measured the same way, not these milliseconds with ``host_ms``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        synchronize(device)
    kernels: dict[str, float] = {}
    gpu_kernels = 0
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels[event.name] = kernels.get(event.name, 0.0) + event.time_range.elapsed_us() / 1e3 / steps
            gpu_kernels += 1
    host = summarize_host([(e.key, e.self_cpu_time_total, e.count) for e in prof.key_averages()
                           if e.device_type == torch.autograd.DeviceType.CPU], steps)
    result: dict = {"host": host}
    if device.type == "cuda":
        families: dict[str, float] = {}
        for name, ms in kernels.items():
            families[kernel_family(name)] = families.get(kernel_family(name), 0.0) + ms
        top = sorted(kernels.items(), key=lambda kv: -kv[1])[:8]
        result.update({"gpu_ms": sum(kernels.values()), "families": families, "gpu_kernels": gpu_kernels / steps,
                       "top": [{"kernel": name[:90], "ms": ms} for name, ms in top]})
    return result


def print_profile(profile: dict) -> None:
    if "families" in profile:
        print(f"    GPU ms/step by family ({profile['gpu_kernels']:.0f} kernels):", ", ".join(
            f"{k} {v:.3f}" for k, v in sorted(profile["families"].items(), key=lambda kv: -kv[1])))
    host = profile["host"]
    print(f"    host ms/step by family, profiled ({host['launch_calls']:.0f} launch calls):", ", ".join(
        f"{k} {v['ms']:.3f}" for k, v in sorted(host["families"].items(), key=lambda kv: -kv[1]["ms"])))


def measure(impl, T, B, channels_last, dtype, device, warmup, repeats, compile_model,
            compile_mode="default", profile_steps=0, layout_optimization=True, turn=None) -> dict:
    """One implementation at one setting. ``compile_s`` is the first step's wall time (tracing and
    compiling, or loading compiled code from torch.compile's caches); then, in a process of
    ``common.compile_then_measure``, it waits for its ``turn`` before timing anything."""
    row = {"impl": impl, "T": T, "B": B, "layout": "channels_last" if channels_last else "nchw",
           "dtype": "bf16" if dtype == torch.bfloat16 else "fp32"}
    try:
        net = build(impl, T, device, dtype)
    except Exception as exc:  # e.g. a SpikingJelly version without the precision API
        net = f"failed to build: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    if isinstance(net, str):
        row["note"] = net
        return row
    net = net.to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    # a fresh dynamo per measurement: static shapes at every setting (the second shape of a code
    # object otherwise compiles dynamic) and a recompile budget of its own
    torch._dynamo.reset()
    options = compile_options(compile_mode, static_launch=STATIC_LAUNCH)
    if not layout_optimization:  # inductor otherwise runs an NCHW model's convs channels-last
        options["layout_optimization"] = False
    step_model = torch.compile(net, options=options) if compile_model else net
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    images = torch.randn(B, 3, 32, 32, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (B,), device=device)

    def step():
        if impl == "spikingjelly":
            reset_spikingjelly(net)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = F.cross_entropy(step_model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    try:
        start = time.perf_counter()
        step()
        synchronize(device)
        row["compile_s"] = time.perf_counter() - start
        wait_for_turn(turn)
        row["ms"] = back_to_back_ms(step, device, warmup, repeats)
        row["latency_ms"] = time_ms(step, device, 0, repeats)
        row["images_per_s"] = B / row["ms"] * 1e3
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            step()
            torch.cuda.synchronize()
            row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            row["host_ms"] = host_ms(step, device, repeats)
            if impl == "mpdagl":
                row["host_syncs"] = host_syncs(step, device)
                if compile_model:  # our kernels' launchers in the graphs loaded so far
                    row["launchers"] = ", ".join(f"{kind} {n}" for kind, n in
                                                 compiled_kernel_launchers().items()) or None
        if profile_steps:
            row["profile"] = step_profile(step, profile_steps, device)
            if "gpu_ms" in row["profile"]:
                row["gpu_ms"] = row["profile"]["gpu_ms"]
    except Exception as exc:  # one broken implementation must not hide the others
        row["note"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return row


def plan(args) -> list[tuple[str, str, bool, torch.dtype]]:
    """(implementation, setting, channels_last, dtype) of every measurement, the ANN floor first
    (each row's ratio is known when printed) and SpikingJelly last (compiling it changes
    torch.compile's cache key for what follows in the same process)."""
    variants = [(None, torch.bfloat16 if args.dtype == "bf16" else torch.float32)]
    if args.full:
        variants = [(cl, dt) for cl in (False, True) for dt in (torch.float32, torch.bfloat16)]
    impls = sorted(args.impls, key=lambda impl: (impl != "ann", impl == "spikingjelly"))
    items = []
    for impl in impls:
        for name in settings_of(impl, args.settings):
            for cl, dtype in variants:
                if cl is None:
                    cl = SETTINGS[name][2] if args.layout is None else args.layout == "channels_last"
                items.append((impl, name, cl, dtype))
    return items


def command_of(args, impl: str, name: str, channels_last: bool, dtype: torch.dtype) -> list[str]:
    """The ``python -m bench.train_step`` that measures one item of ``plan`` alone."""
    command = [sys.executable, "-m", "bench.train_step", "--impls", impl, "--settings", name,
               "--device", args.device, "--dtype", "bf16" if dtype == torch.bfloat16 else "fp32",
               "--layout", "channels_last" if channels_last else "nchw", "--compile-mode", args.compile_mode,
               "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--profile", str(args.profile)]
    command += ["--no-layout-optimization"] * args.no_layout_optimization
    command += ["--opaque-route"] * args.opaque_route + ["--triton-launcher"] * args.triton_launcher
    return command + (["--batch", str(args.batch)] if args.batch else [])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS),
                        help="default: t4b64 t2b128 t2b128cl for mpdagl and ann, t4b64 t2b128 for spikingjelly, "
                             "t2b128 for reference")
    parser.add_argument("--impls", nargs="+", default=IMPLEMENTATIONS, choices=IMPLEMENTATIONS)
    parser.add_argument("--full", action="store_true", help="fp32 and bf16, NCHW and channels_last")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="autocast dtype (without --full)")
    parser.add_argument("--layout", choices=["nchw", "channels_last"],
                        help="parameters' and images' layout at every setting (default: the setting's; without --full)")
    parser.add_argument("--batch", type=int, help="override B (e.g. small runs on the CPU)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--compile-mode", default="default", choices=["default", "reduce-overhead", "max-autotune"])
    parser.add_argument("--no-layout-optimization", action="store_true",
                        help="keep an NCHW model's convolutions NCHW under inductor (copies around ours otherwise)")
    parser.add_argument("--opaque-route", action="store_true",
                        help="ours through the opaque custom ops under compile, not the inductor route")
    parser.add_argument("--triton-launcher", action="store_true",
                        help="our kernels on Triton's launcher in compiled graphs, not inductor's static one")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="also profile STEPS steps: host time by family, and on CUDA GPU time by kernel family")
    parser.add_argument("--jobs", type=int, default=0, metavar="N",
                        help="one process per step: N compile at a time, then each measures alone, in turn")
    parser.add_argument("--turn", help=argparse.SUPPRESS)  # set by --jobs's parent: common.wait_for_turn
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    os.environ.setdefault("SJ_PLIF_CUDA_IMPLEMENTATION", "triton")
    ops.INDUCTOR_ROUTE = not args.opaque_route
    global STATIC_LAUNCH
    STATIC_LAUNCH = not args.triton_launcher
    columns = ["impl", "T", "B", "layout", "dtype", "ms", "latency_ms", "gpu_ms", "host_ms", "images_per_s",
               "peak_gib", "vs_ann", "host_syncs", "launchers", "compile_s", "note"]
    items, rows, floors = plan(args), [], {}
    parallel_s = None

    def ratio(row: dict) -> None:
        key = (row["T"], row["B"], row["layout"], row["dtype"])
        if key in floors and row.get("ms"):
            row["vs_ann"] = row["ms"] / floors[key]

    def add(row: dict) -> None:
        if row["impl"] == "ann" and row.get("ms"):
            floors[(row["T"], row["B"], row["layout"], row["dtype"])] = row["ms"]
        ratio(row)
        rows.append(row)
        print_table([row], columns)
        if "profile" in row:
            print_profile(row["profile"])
        # written after every row: a run cut short still leaves what it measured
        write_json(args.json, {"benchmark": "train_step", "environment": environment(device),
                               "parallel_compile_s": parallel_s, "rows": rows})

    if args.jobs and not args.no_compile and not args.turn:
        # the slowest to compile start first: the last processes to finish compiling start first
        order = sorted(range(len(items)), key=lambda i: SLOWEST_TO_COMPILE.index(items[i][0]))

        def arrived(position: int, result: dict | str) -> None:
            impl, name, channels_last, dtype = items[order[position]]
            if isinstance(result, str):
                T, B = SETTINGS[name][:2]
                add({"impl": impl, "T": T, "B": args.batch or B, "layout": "channels_last" if channels_last else "nchw",
                     "dtype": "bf16" if dtype == torch.bfloat16 else "fp32", "note": f"failed: {result}"})
            else:
                add(result["rows"][0])

        _, parallel_s = compile_then_measure([command_of(args, *items[i]) for i in order], args.jobs,
                                             on_result=arrived)
        print(f"compiled {len(items)} steps, {args.jobs} processes at a time, in {parallel_s:.0f} s; "
              "then each measured alone in its process")
        rows = [rows[order.index(i)] for i in range(len(items))]  # the plan's order: the floor first
    else:
        for impl, name, channels_last, dtype in items:
            T, B = SETTINGS[name][:2]
            add(measure(impl, T, args.batch or B, channels_last, dtype, device, args.warmup, args.repeats,
                        not args.no_compile, args.compile_mode, args.profile, not args.no_layout_optimization,
                        args.turn))
    for row in rows:
        ratio(row)
    env = environment(device)
    print(f"\n{env['device']}  torch {env['torch']}  triton {env['triton']}")
    print_table(rows, columns)
    payload = {"benchmark": "train_step", "environment": env, "parallel_compile_s": parallel_s, "rows": rows}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
