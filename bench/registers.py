"""Registers, spills and an occupancy estimate of every kernel at the block sizes the launchers pick,
read from sm_90 cubins compiled on this machine (no GPU needed).

    python -m bench.registers                    # ResNet-19-like layers, bf16, T in 1 2 4 6 10
    python -m bench.registers --json out.json

Occupancy here is only the register limit: 65536 registers per SM, 64 warps at most.
``static_launch`` says whether inductor's static CUDA launcher takes the kernel inside a compiled
graph (else it falls back to Triton's launcher, with more host time per launch).
"""

from __future__ import annotations

import argparse
import os

os.environ.pop("TRITON_INTERPRET", None)  # the real compiler, never the interpreter

import torch  # noqa: E402
import triton.language as tl  # noqa: E402

from bench.common import print_table, write_json  # noqa: E402
from mpdagl_triton.kernels import tdbn_plif as K  # noqa: E402
from mpdagl_triton.kernels.offline import compile_variant, resource_usage  # noqa: E402

PER_CHANNEL = {"mean_ptr": "fp32", "var_ptr": "fp32", "gamma_ptr": "fp32", "beta_ptr": "fp32", "rho_ptr": "fp32"}
#: [B, C, H, W] of typical layers: ResNet-19 stages at 32x32 and its head
LAYERS = {"stage1": (64, 128, 32, 32), "stage3": (64, 512, 8, 8), "head": (64, 256)}


def _layout(shape, T, channels_last):
    x = torch.empty((T,) + shape, device="meta")
    if channels_last and x.dim() == 5:
        x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (T, shape[0]))
    return K.Layout.of(x)


def variants(T: int, layout: K.Layout, batch: int):
    common = dict(CHANNELS_LAST=layout.channels_last, INT64=False, COMPUTE=tl.float32)
    p = K.plan("stats", layout, T, batch)
    yield "stats", K._stats_partial_kernel, {"x_ptr": "bf16", "partial_ptr": "fp32"}, \
        dict(T=T, BLOCK_R=p.block_r, BLOCK_K=p.block_k, **common), p.block_r * p.block_k, p.num_warps
    p = K.plan("finalize", layout, T, batch)
    stats = {"partial_ptr": "fp32", "mean_ptr": "fp32", "var_ptr": "fp32", "running_mean_ptr": "fp32",
             "running_var_ptr": "fp32"}
    yield "finalize", K._stats_finalize_kernel, stats, \
        dict(BLOCK_P=p.block_r, BLOCK_C=p.block_k, COMPUTE=tl.float32, UPDATE_RUNNING=True), \
        p.block_r * p.block_k, p.num_warps
    p = K.plan("forward", layout, T, batch)
    yield "forward", K._forward_kernel, {"x_ptr": "bf16", "res_ptr": "bf16", "skip_ptr": "bf16", "out_ptr": "bf16",
                                         "widths_ptr": "fp32", **PER_CHANNEL}, \
        dict(T=T, WIDTH_RULE=2, LEARN_TAU=True, HAS_RESIDUAL=False, HAS_SKIP=True, BLOCK_R=p.block_r, BLOCK_K=p.block_k,
             **common), \
        p.block_r * p.block_k, p.num_warps
    p = K.plan("backward", layout, T, batch)
    pointers = {"grad_ptr": "bf16", "x_ptr": "bf16", "res_ptr": "bf16", "dx_ptr": "bf16", "dres_ptr": "bf16",
                "partial_ptr": "fp32", "sums_ptr": "fp32", "dy_sums_ptr": "fp32", "dgamma_ptr": "fp32",
                "dbeta_ptr": "fp32", "drho_ptr": "fp32", "widths_ptr": "fp32", **PER_CHANNEL}
    for name, dx in (("backward sums", False), ("backward dx", True)):
        yield name, K._backward_kernel, pointers, dict(
            T=T, SURROGATE=0, LEARN_TAU=True, HAS_RESIDUAL=False, WRITE_RESIDUAL_GRAD=False,
            WRITE_DX=dx, SUM_DX=False, BATCH_STATS=True, BLOCK_R=p.block_r, BLOCK_K=p.block_k, **common), \
            p.block_r * p.block_k, p.num_warps
    p = K.plan("sums", layout, T, batch)
    yield "backward total", K._sum_partials_kernel, {"partial_ptr": "fp32", "out_ptr": "fp32"}, \
        dict(BLOCK_P=p.block_r, BLOCK_C=p.block_k, COMPUTE=tl.float32), p.block_r * p.block_k, p.num_warps


def static_launch(compiled) -> str:
    """"yes" when inductor's static CUDA launcher (what ``compile_options`` asks for) can launch
    this kernel, else why it falls back to Triton's slower launcher. The checks read only the
    compiled kernel's metadata and signature; the cubin is loaded later, on a GPU."""
    from torch._inductor.runtime.static_triton_launcher import StaticallyLaunchedCudaKernel

    compiled._cubin_path = "not loaded here"
    try:
        StaticallyLaunchedCudaKernel(compiled)
    except NotImplementedError as exc:
        return str(exc)
    return "yes"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timesteps", nargs="+", type=int, default=[1, 2, 4, 6, 10])
    parser.add_argument("--layers", nargs="+", default=list(LAYERS), choices=list(LAYERS))
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    rows = []
    for layer in args.layers:
        shape = LAYERS[layer]
        for channels_last in ((False, True) if len(shape) == 4 else (True,)):
            layout = _layout(shape, 1, channels_last)
            for T in args.timesteps:
                for kernel_name, kernel, pointers, constexprs, tile, warps in variants(T, layout, shape[0]):
                    compiled = compile_variant(kernel, pointers, constexprs, warps)
                    usage = resource_usage(compiled)
                    warps_per_sm = min(64, 65536 // (usage["registers"] * 32 * warps) * warps)
                    rows.append({"layer": layer, "layout": "channels_last" if layout.channels_last else "nchw",
                                 "T": T, "kernel": kernel_name, "tile": tile, "warps": warps, **usage,
                                 "occupancy": warps_per_sm / 64, "static_launch": static_launch(compiled)})
                    print_table([rows[-1]], list(rows[-1]))
    write_json(args.json, {"benchmark": "registers", "target": "sm_90", "rows": rows})
    return {"rows": rows}


if __name__ == "__main__":
    main()
