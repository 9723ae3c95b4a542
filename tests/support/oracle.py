"""Shared helpers: random inputs for the fused op, and comparison against the float64 reference."""

from __future__ import annotations

import dataclasses

import torch

import mpdagl_triton as M
from mpdagl_triton import reference

#: where the Triton path runs: CUDA when present (the GPU check), else the CPU interpreter
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclasses.dataclass
class Case:
    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float64
    channels_last: bool = False
    residual: bool = False
    skip: bool = False
    learn_tau: bool = True
    training: bool = True
    surrogate: str = "rect"
    width_rule: str = "mpdagl"
    seed: int = 0


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """[T, B, C, H, W] with C innermost in memory, as a channels_last conv output reshaped."""
    T, B, C, H, W = x.shape
    return x.reshape(T * B, C, H, W).contiguous(memory_format=torch.channels_last).reshape(T, B, C, H, W)


def make_inputs(case: Case) -> dict:
    g = torch.Generator().manual_seed(case.seed)
    C = case.shape[2]
    param_dtype = torch.float64 if case.dtype == torch.float64 else torch.float32
    x = (torch.randn(case.shape, generator=g, dtype=torch.float64) * 1.5 + 0.3).to(case.dtype)
    if case.channels_last:
        x = to_channels_last(x)
    inputs = {
        "x": x,
        "gamma": (torch.rand(C, generator=g, dtype=torch.float64) + 0.5).to(param_dtype),
        "beta": (torch.randn(C, generator=g, dtype=torch.float64) * 0.3).to(param_dtype),
        "rho": torch.tensor(-0.8, dtype=param_dtype) if case.learn_tau else None,
        "residual": None,
        "skip": None,
        "running_mean": (torch.randn(C, generator=g, dtype=torch.float64) * 0.2).to(param_dtype),
        "running_var": (torch.rand(C, generator=g, dtype=torch.float64) + 0.5).to(param_dtype),
        "grad": torch.randn(case.shape, generator=g, dtype=torch.float64).to(case.dtype),
    }
    if case.residual:
        res = (torch.randn(case.shape, generator=g, dtype=torch.float64) * 0.5).to(case.dtype)
        inputs["residual"] = to_channels_last(res) if case.channels_last else res
    if case.skip:  # a block input: small integers, as a ResNet shortcut carries
        skip = torch.randint(0, 3, case.shape, generator=g).to(case.dtype)
        inputs["skip"] = to_channels_last(skip) if case.channels_last else skip
    return {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


DIFFERENTIABLE = ("x", "gamma", "beta", "rho", "residual", "skip")


def run(case: Case, inputs: dict, backend: str, *, as_float64: bool = False,
        timesteps: int | None = None) -> dict:
    """Spikes, gradients of every differentiable input, and the updated running stats
    (``timesteps``: x is one timestep, the input at every step)."""
    leaves = {}
    for name in DIFFERENTIABLE:
        t = inputs[name]
        if t is None:
            continue
        t = t.detach().double() if as_float64 else t.detach().clone()
        leaves[name] = t.requires_grad_()
    cast = (lambda t: t.double()) if as_float64 else (lambda t: t.clone())
    running_mean, running_var = cast(inputs["running_mean"]), cast(inputs["running_var"])
    spikes = M.tdbn_plif(
        leaves["x"], leaves["gamma"], leaves["beta"], leaves.get("rho"),
        residual=leaves.get("residual"), skip=leaves.get("skip"), running_mean=running_mean,
        running_var=running_var,
        training=case.training, learn_tau=case.learn_tau, tau=None if case.learn_tau else 0.3,
        surrogate=case.surrogate, width_rule=case.width_rule, backend=backend, timesteps=timesteps,
    )
    grads = torch.autograd.grad(spikes, list(leaves.values()), inputs["grad"].to(spikes.dtype))
    return {
        "spikes": spikes.detach(),
        "grads": dict(zip(leaves, grads)),
        "running_mean": running_mean,
        "running_var": running_var,
    }


def membrane_margin(case: Case, inputs: dict) -> torch.Tensor:
    """|V - Vth| of every element, in float64, from the reference forward."""
    x = inputs["x"].double()
    res = inputs["residual"]
    y = reference.tdbn(
        x, inputs["gamma"].double(), inputs["beta"].double(),
        residual=None if res is None else res.double(),
        running_mean=inputs["running_mean"].double(), running_var=inputs["running_var"].double(),
        training=case.training, vth=0.5,
    )
    tau = torch.sigmoid(inputs["rho"].double()) if case.learn_tau else 0.3
    v = torch.zeros_like(y[0])
    s = torch.zeros_like(y[0])
    margins = []
    for t in range(y.shape[0]):
        v = tau * v * (1 - s) + y[t]
        s = (v >= 0.5).double()
        margins.append((v - 0.5).abs())
    return torch.stack(margins)


def assert_close_to_max(actual: torch.Tensor, expected: torch.Tensor, rtol: float, name: str) -> None:
    """max |actual - expected| <= rtol * max |expected| (exact equality when expected is all 0)."""
    actual, expected = actual.double(), expected.double()
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    scale = expected.abs().max().item()
    err = (actual - expected).abs().max().item()
    assert err <= rtol * scale, f"{name}: max error {err:.3e} > {rtol:.1e} * {scale:.3e}"


def check_float64(case: Case, rtol: float = 1e-10) -> dict:
    """float64 in, float64 math: spikes identical, every gradient equal to rounding."""
    inputs = make_inputs(case)
    got = run(case, inputs, "triton")
    want = run(case, inputs, "torch")
    assert torch.equal(got["spikes"], want["spikes"])
    fired = want["spikes"] if inputs["skip"] is None else want["spikes"] - inputs["skip"]
    assert 0 < fired.sum() < fired.numel(), "degenerate case: all or no spikes"
    assert got["grads"].keys() == want["grads"].keys()
    for name in want["grads"]:
        assert_close_to_max(got["grads"][name], want["grads"][name], rtol, name)
    for name in ("running_mean", "running_var"):
        assert_close_to_max(got[name], want[name], rtol, name)
    return want
