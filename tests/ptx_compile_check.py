"""Compile every kernel variant for an H100 (sm_90) without a GPU; run by test_ptx_compile.py.

The interpreter runs kernels as Python and accepts code that Triton's compiler rejects, so this
lowers each variant the op can launch through the real compiler, down to a cubin with ptxas.
Must run without TRITON_INTERPRET.
"""

import sys

import triton
import triton.language as tl

from mpdagl_triton.kernels import tdbn_plif as K
from mpdagl_triton.kernels.offline import compile_variant


def compile_kernel(kernel, pointers: dict, constexprs: dict) -> None:
    assert "cubin" in compile_variant(kernel, pointers, constexprs).asm


def main() -> int:
    count = 0
    for x_type, channels_last in [("bf16", False), ("bf16", True), ("fp32", False),
                                  ("fp32", True), ("fp64", False)]:
        compute = "fp64" if x_type == "fp64" else "fp32"
        tl_compute = tl.float64 if compute == "fp64" else tl.float32
        block = dict(CHANNELS_LAST=channels_last, BLOCK_R=16, BLOCK_K=64, INT64=x_type == "fp32",
                     COMPUTE=tl_compute)
        compile_kernel(K._stats_partial_kernel, {"x_ptr": x_type, "partial_ptr": compute},
                       dict(T=4, **block))
        compile_kernel(K._stats_finalize_kernel,
                       {"partial_ptr": compute, "mean_ptr": compute, "var_ptr": compute},
                       dict(BLOCK_P=32, BLOCK_C=64, COMPUTE=tl_compute))
        per_channel = {"mean_ptr": compute, "var_ptr": compute, "gamma_ptr": "fp32",
                       "beta_ptr": "fp32", "tau_ptr": "fp32"}
        compile_kernel(K._forward_kernel,
                       {"x_ptr": x_type, "res_ptr": x_type, "out_ptr": x_type, **per_channel},
                       dict(T=4, HAS_RESIDUAL=channels_last, **block))
        count += 3
        # the three passes the op launches; the surrogate and T vary across the layouts
        for variant, (accumulate, write_dx, batch_stats) in enumerate(
            [(True, False, True), (False, True, True), (True, True, False)]
        ):
            surrogate = (count + variant) % 4
            compile_kernel(
                K._backward_kernel,
                {"grad_ptr": x_type, "x_ptr": x_type, "res_ptr": x_type, "dx_ptr": x_type,
                 "dres_ptr": x_type, "partial_ptr": compute, "dy_means_ptr": compute,
                 "kappa_first_ptr": compute, "kappa_rest_ptr": compute, **per_channel},
                dict(T=1 if variant == 2 and not channels_last else 4, SURROGATE=surrogate,
                     HAS_RESIDUAL=channels_last, WRITE_RESIDUAL_GRAD=channels_last,
                     ACCUMULATE=accumulate, WRITE_DX=write_dx, BATCH_STATS=batch_stats, **block),
            )
            count += 1
    print(f"compiled {count} kernel variants for sm_90 with triton {triton.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
