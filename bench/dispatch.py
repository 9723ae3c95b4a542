"""Host time of launching the fused kernels in eager calls: Triton's ``kernel[grid](...)`` against
the direct launcher the library uses (``kernels.tdbn_plif._DirectLauncher``).

    python -m bench.dispatch [--device cpu|cuda] [--json F]

A stack of small ``TdBNPLIF`` layers runs forward + backward eagerly (six launches per layer),
once with every launch through Triton's ``JITFunction.run`` (``kernels.tdbn_plif.DIRECT_LAUNCH = False``) and
once through the direct launcher; reported per layer fwd+bwd and per launch. Without a GPU the
kernels compile for sm_90 and their launchers only record the call (nothing runs), so what is
timed is the Python in front of the launcher plus the layer's own host path; on CUDA they launch.
``variants``: the compiled variants the direct launchers hold (six for one layer shape).
"""

from __future__ import annotations

import contextlib
import os

import torch

from bench.common import environment, layer_stack_parser, print_table, write_json

LAUNCHES_PER_LAYER = 6  # statistics 2, forward 1, backward 3


def measure(device_type: str, shape=(4, 2, 8, 4, 4), depth: int = 8) -> list[dict]:
    if device_type == "cpu":
        os.environ.pop("TRITON_INTERPRET", None)  # Triton's real launch path, compiled for sm_90
    from bench.host import host_us
    from mpdagl_triton import TdBNPLIF, ops
    from mpdagl_triton.kernels import tdbn_plif as K
    from mpdagl_triton.kernels.offline import offline_driver, recorded_launches

    device = torch.device(device_type)
    torch.manual_seed(0)
    x = torch.randn(shape, device=device, requires_grad=True)
    grad = torch.randn(shape, device=device)
    layer = torch.nn.Sequential(*(TdBNPLIF(shape[2], backend="triton") for _ in range(depth))).to(device)
    rows = []
    with contextlib.ExitStack() as stack:
        calls = []
        if device.type == "cpu":
            ops.resolve_backend = lambda backend, device: "triton"  # CPU tensors, recorded launches
            stack.enter_context(offline_driver())
            calls = stack.enter_context(recorded_launches())

        def step():
            calls.clear()  # recorded launches keep their tensors alive
            x.grad = None
            layer.zero_grad(set_to_none=True)
            layer(x).backward(grad)

        saved = K.DIRECT_LAUNCH
        try:
            for direct in (False, True):
                K.DIRECT_LAUNCH = direct
                step()  # compiles (or fills the direct launcher's cache)
                us = host_us(step, device) / depth
                variants = sum(len(launcher.variants) for launcher in K._DIRECT_LAUNCHERS.values())
                rows.append({"launch": "direct launcher" if direct else "Triton's kernel[grid]",
                             "layer_us": us, "variants": variants if direct else None})
        finally:
            K.DIRECT_LAUNCH = saved
    saving = rows[0]["layer_us"] - rows[1]["layer_us"]
    rows.append({"launch": "saved per launch", "layer_us": saving / LAUNCHES_PER_LAYER})
    return rows


def main(argv: list[str] | None = None) -> dict:
    args = layer_stack_parser(__doc__).parse_args(argv)
    rows = measure(args.device, depth=args.depth)
    print_table(rows, ["launch", "layer_us", "variants"])
    payload = {"benchmark": "dispatch", "environment": environment(torch.device(args.device)), "rows": rows}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
