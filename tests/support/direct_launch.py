"""Check, without a GPU, that eager launches through ``kernels.tdbn_plif._DirectLauncher`` hand
Triton's launcher exactly what ``JITFunction.run`` would: the same compiled variant, grid,
stream and arguments (read by tests/test_direct_launch.py).

    python tests/support/direct_launch.py

Layers run forward and backward on CPU tensors; Triton compiles every variant for sm_90 (the
offline driver) and the compiled kernels' launchers are replaced by recorders, so nothing runs.
After each direct launch the same launch goes through ``JITFunction.run`` and both recorded calls
are compared. The cases are ordered so that a key missing any part of Triton's specialization
(pointer alignment, an integer's value, a dtype, a constexpr) would reuse a wrong variant.
Prints one JSON line: launches, variants compiled, cache hits, mismatches.
Must run without TRITON_INTERPRET.
"""

import json
import math
import os

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402

from mpdagl_triton import ops  # noqa: E402
from mpdagl_triton.kernels import tdbn_plif as K  # noqa: E402
from mpdagl_triton.kernels.offline import offline_driver, recorded_launches  # noqa: E402

stats = {"direct": 0, "compiled": 0, "mismatches": []}
direct_launch = K._DirectLauncher.launch


def _same(a, b) -> bool:
    if type(a) is not type(b):
        return False
    if type(a).__name__ == "LazyDict":  # launch metadata, made anew per launch (for hooks)
        return a.data == b.data
    return a is b or a == b


def checked_launch(self, grid, *args, num_warps, **constexprs):
    before = len(self.variants)
    direct_launch(self, grid, *args, num_warps=num_warps, **constexprs)
    if len(self.variants) > before:  # went through Triton: nothing to compare
        stats["compiled"] += 1
        return
    stats["direct"] += 1
    self.kernel[grid](*args, num_warps=num_warps, **constexprs)
    (ours_kernel, ours), (triton_kernel, triton) = calls[-2], calls[-1]
    same = ours_kernel is triton_kernel and len(ours) == len(triton) and all(
        _same(a, b) for a, b in zip(ours, triton))
    if not same:
        stats["mismatches"].append({"kernel": self.kernel.fn.__name__, "grid": list(grid)})


K._DirectLauncher.launch = checked_launch
ops.resolve_backend = lambda backend, device: "triton"


def layer(shape, dtype=torch.float32, channels_last=False, offset=0, residual=False, skip=False,
          learn_tau=True, training=True, timesteps=None, surrogate="rect"):
    """One fused layer forward + backward; ``offset`` elements shift x off 16-byte alignment."""
    torch.manual_seed(0)
    x = torch.randn(math.prod(shape) + offset, dtype=dtype)[offset:].view(shape)
    if channels_last:
        x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, shape[:2])
    x.requires_grad_(True)
    C = shape[2]
    gamma = torch.rand(C, requires_grad=True)
    beta = torch.zeros(C, requires_grad=True)
    rho = torch.tensor(-1.386, requires_grad=True) if learn_tau else None
    extra = {}
    if residual:
        extra["residual"] = torch.randn(shape if timesteps is None else (timesteps, *shape[1:]),
                                        dtype=dtype)
    if skip:
        extra["skip"] = torch.randn(shape if timesteps is None else (timesteps, *shape[1:]),
                                    dtype=dtype)
    if not training:
        extra.update(running_mean=torch.zeros(C), running_var=torch.ones(C), training=False)
    spikes = ops.tdbn_plif(x, gamma, beta, rho, learn_tau=learn_tau, tau=None if learn_tau else 0.2, backend="triton",
                           timesteps=timesteps, surrogate=surrogate, **extra)
    spikes.backward(torch.randn_like(spikes))


CASES = [
    dict(shape=(2, 4, 3, 5, 6)),
    dict(shape=(2, 4, 3, 5, 6)),  # the same again: every launch from the cache
    dict(shape=(2, 4, 3, 5, 6), offset=1),  # x no longer 16-byte aligned
    dict(shape=(2, 4, 3, 5, 7)),  # other sizes, the same specialization
    dict(shape=(2, 4, 3, 4, 8)),  # 32 values per channel and sample: sizes divisible by 16
    dict(shape=(2, 4, 3, 5, 6), dtype=torch.bfloat16),
    dict(shape=(2, 4, 3, 5, 6), dtype=torch.float64),
    dict(shape=(2, 4, 3, 5, 6), channels_last=True),
    dict(shape=(2, 4, 3, 5, 6), residual=True, skip=True),
    dict(shape=(2, 4, 3, 5, 6), learn_tau=False, surrogate="atan"),
    dict(shape=(2, 4, 3, 5, 6), training=False),
    dict(shape=(1, 4, 3, 5, 6), timesteps=3),  # one input timestep, broadcast over T
    dict(shape=(3, 4, 6)),  # [T, B, C]
]

if __name__ == "__main__":
    with offline_driver(), recorded_launches() as calls:
        for case in CASES:
            layer(**case)
            layer(**case)
    print(json.dumps({"launches": len(calls), **stats}))
