"""Compile kernel variants for an H100 (sm_90) without a GPU, through Triton's real compiler.

The interpreter runs kernels as Python and accepts code that Triton's compiler rejects (and some
variants hit compiler bugs of one Triton version only), so this lowers kernels down to cubins:

    python tests/support/ptx_compile_check.py                 the fixed set below (run by test_packaging)
    python tests/support/ptx_compile_check.py --from-tests tests/test_op.py ...
        runs those tests through the interpreter, records every launch (argument dtypes and
        alignment, integer values, constexprs, warps), then compiles each distinct variant
        exactly as the GPU would; run it with each Triton version the project supports.

Compiling must run without TRITON_INTERPRET.
"""

import json
import os
import subprocess
import sys
import tempfile


def compile_kernel(kernel, pointers: dict, constexprs: dict) -> None:
    from mpdagl_triton.kernels.offline import compile_variant

    assert "cubin" in compile_variant(kernel, pointers, constexprs).asm


def fixed_set() -> int:
    import triton
    import triton.language as tl

    from mpdagl_triton.kernels import tdbn_plif as K

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
                       {"partial_ptr": compute, "mean_ptr": compute, "var_ptr": compute,
                        "running_mean_ptr": "fp32", "running_var_ptr": compute},
                       dict(BLOCK_P=32, BLOCK_C=64, COMPUTE=tl_compute,
                            UPDATE_RUNNING=not channels_last))
        compile_kernel(K._sum_partials_kernel, {"partial_ptr": compute, "out_ptr": compute},
                       dict(BLOCK_P=64, BLOCK_C=32, COMPUTE=tl_compute))
        per_channel = {"mean_ptr": compute, "var_ptr": compute, "gamma_ptr": "fp32",
                       "beta_ptr": "fp32", "rho_ptr": "fp32"}
        compile_kernel(K._forward_kernel,
                       {"x_ptr": x_type, "res_ptr": x_type, "skip_ptr": x_type, "out_ptr": x_type,
                        "widths_ptr": compute, **per_channel},
                       dict(T=4, WIDTH_RULE=count % 3, LEARN_TAU=not channels_last,
                            HAS_RESIDUAL=channels_last, HAS_SKIP=channels_last, **block))
        count += 4
        # both passes, in training and eval; the surrogate, width rule and T vary across layouts
        for variant, (write_dx, batch_stats) in enumerate([(False, True), (True, True), (True, False)]):
            surrogate = (count + variant) % 4
            compile_kernel(
                K._backward_kernel,
                {"grad_ptr": x_type, "x_ptr": x_type, "res_ptr": x_type, "dx_ptr": x_type,
                 "dres_ptr": x_type, "partial_ptr": compute, "sums_ptr": compute,
                 "dy_sums_ptr": compute, "dgamma_ptr": "fp32", "dbeta_ptr": "fp32",
                 "drho_ptr": "fp32", "widths_ptr": compute, **per_channel},
                dict(T=1 if variant == 2 and not channels_last else 4, SURROGATE=surrogate,
                     LEARN_TAU=variant != 2,
                     HAS_RESIDUAL=channels_last, WRITE_RESIDUAL_GRAD=channels_last,
                     WRITE_DX=write_dx, SUM_DX=channels_last and variant == 1,
                     BATCH_STATS=batch_stats, **block),
            )
            count += 1
    print(f"compiled {count} kernel variants for sm_90 with triton {triton.__version__}")
    check_float_arguments_are_float64()
    return 0


def check_float_arguments_are_float64() -> None:
    """eps, vth, alpha and a fixed tau must reach the GPU kernels as float64: Triton passes a
    Python float as float32 unless the parameter says otherwise, and a float32 0.4 threshold broke
    float64 agreement with the reference on a real GPU (the interpreter keeps Python floats exact)."""
    import re

    import torch
    import triton.language as tl

    from mpdagl_triton.kernels import tdbn_plif as K
    from mpdagl_triton.kernels.offline import compile_call

    x = torch.empty(64, dtype=torch.float64)
    args = (x, x, x, x, x, x, x, x, x, x, 4, 36, 1, 5, 720, 720, 180, 36, 1e-5, 0.4, 1.0, 0.3, 1.0,
            1e-3)
    kwargs = dict(T=4, WIDTH_RULE=2, LEARN_TAU=False, HAS_RESIDUAL=False, HAS_SKIP=False, CHANNELS_LAST=False,
                  BLOCK_R=4, BLOCK_K=64, INT64=False, COMPUTE=tl.float64)
    ttir = compile_call(K._forward_kernel, args, kwargs).asm["ttir"]
    names = ("eps", "vth", "alpha", "tau", "kappa0", "gamma_floor")
    types = dict(re.findall(rf"%({'|'.join(names)}): (\w+)", ttir))
    assert types == dict.fromkeys(names, "f64"), types
    print("float arguments reach the kernels as f64")


def _describe(value):
    import torch
    import triton.language as tl

    if isinstance(value, torch.Tensor):
        return {"tensor": str(value.dtype).removeprefix("torch."), "aligned": value.data_ptr() % 16 == 0}
    if isinstance(value, tl.dtype):
        return {"tl": value.name}
    return value


def _rebuild(value):
    import torch
    import triton.language as tl

    if isinstance(value, dict) and "tensor" in value:
        t = torch.empty(64 + 1, dtype=getattr(torch, value["tensor"]))
        return t[:64] if value["aligned"] else t[1:]
    if isinstance(value, dict) and "tl" in value:
        return {"fp32": tl.float32, "fp64": tl.float64}[value["tl"]]
    return value


def record(pytest_args: list[str], path: str) -> int:
    """Run pytest in the interpreter with every kernel launch recorded into ``path``."""
    os.environ["TRITON_INTERPRET"] = "1"
    import pytest

    from mpdagl_triton.kernels import tdbn_plif as K

    seen = {}

    class Recorder:
        def __init__(self, name, kernel):
            self.name, self.kernel = name, kernel

        def __getitem__(self, grid):
            launch = self.kernel[grid]

            def call(*args, **kwargs):
                entry = {"kernel": self.name, "args": [_describe(a) for a in args],
                         "kwargs": {k: _describe(v) for k, v in kwargs.items()}}
                seen.setdefault(json.dumps(entry, sort_keys=True), entry)
                return launch(*args, **kwargs)

            return call

    for name in K.KERNEL_NAMES:
        setattr(K, name, Recorder(name, getattr(K, name)))
    code = pytest.main(["-q", "-p", "no:cacheprovider", *pytest_args])
    with open(path, "w") as f:
        json.dump(list(seen.values()), f)
    print(f"recorded {len(seen)} distinct launches")
    return int(code)


def compile_recorded(path: str) -> int:
    import triton

    from mpdagl_triton.kernels import tdbn_plif as K
    from mpdagl_triton.kernels.offline import compile_call

    entries = json.load(open(path))
    failures = 0
    for entry in entries:
        kernel = getattr(K, entry["kernel"])
        args = tuple(_rebuild(a) for a in entry["args"])
        kwargs = {k: _rebuild(v) for k, v in entry["kwargs"].items()}
        try:
            assert "cubin" in compile_call(kernel, args, kwargs).asm
        except Exception as exc:
            failures += 1
            consts = {k: v for k, v in entry["kwargs"].items()}
            print(f"FAILED {entry['kernel']} {consts}: {type(exc).__name__}: {str(exc)[:200]}")
    print(f"compiled {len(entries) - failures} of {len(entries)} recorded variants for sm_90 "
          f"with triton {triton.__version__}")
    return 1 if failures else 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--record"]:
        return record(argv[2:], argv[1])
    if argv[:1] == ["--compile"]:
        return compile_recorded(argv[1])
    if argv[:1] == ["--from-tests"]:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "launches.json")
            code = subprocess.call([sys.executable, __file__, "--record", path, *argv[1:]])
            if code != 0:
                return code
            env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
            return subprocess.call([sys.executable, __file__, "--compile", path], env=env)
    return fixed_set()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
