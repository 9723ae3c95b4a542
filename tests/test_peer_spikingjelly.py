"""Peer oracle: SpikingJelly 2.0's torch reference path gives our spikes and gradients.

SpikingJelly is an independent implementation of the same neuron: a batch norm whose weight is
``gamma * alpha * Vth`` (tdBN's scale folded into the affine weight) followed by
``neuron.ParametricLIFNode`` in multi-step mode with ``decay_input=False``, ``v_reset=0``,
``detach_reset=False`` and ``surrogate.Rect(alpha=1/kappa)``. Its charge is
``H[t] = V[t-1] - sigmoid(w) V[t-1] + X[t]``, so its decay is ``1 - sigmoid(w) = sigmoid(-w)``:
our ``tau = sigmoid(rho)`` is its ``w = -rho``, and d/d rho = -d/d w. Its Rect derivative
``alpha [|u| < 0.5 / alpha]`` with ``alpha = 1/kappa`` is our rect surrogate of width kappa. Only
width rules with one kappa for every timestep map onto it: ``fixed`` and ``lsg``.

In float64 (where SpikingJelly takes its torch reference path) both compute the same
expressions in different orders: spikes must be identical and every gradient equal to within
rounding. A gradient that is a sum (gamma, beta per channel; rho over everything) is compared
against the sum of its terms' magnitudes, which the test rebuilds from SpikingJelly's batch-norm
output and its gradient, so cancellation in the sum cannot make a rounding difference look
large; x's gradient against its largest entry. The tolerance 1e-12 is the worst-case error of
summing N terms in float64, N * 2**-53, for the largest sum here (rho: N = T*B*C*H*W = 3072,
3.4e-13), with a 3x allowance for the recurrence over T; measured: about 1e-16 to 1e-15.

SpikingJelly is a test dependency installed by CI (``.ci/run``); there the test fails if it is
missing, elsewhere it is skipped.
"""

import math
import os

import pytest
import torch
import torch.nn.functional as F

import mpdagl_triton as M
from support.oracle import DEVICE

if os.environ.get("CI"):
    from spikingjelly.activation_based import neuron as sj_neuron, surrogate as sj_surrogate
else:
    sj_neuron = pytest.importorskip("spikingjelly.activation_based.neuron")
    sj_surrogate = pytest.importorskip("spikingjelly.activation_based.surrogate")

RTOL = 1e-12
SHAPE = (4, 4, 3, 8, 8)  # T, B, C, H, W: 256 values per channel
EPS, MOMENTUM = 1e-5, 0.1


def fresh_inputs(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    C = SHAPE[2]

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * torch.rand((), generator=g, dtype=torch.float64).item()

    return {
        "x": torch.randn(SHAPE, generator=g, dtype=torch.float64) * uniform(0.5, 2) + uniform(-0.5, 0.5),
        "gamma": torch.rand(C, generator=g, dtype=torch.float64) + 0.5,
        "beta": torch.randn(C, generator=g, dtype=torch.float64) * 0.3,
        "rho": torch.tensor(uniform(-2.0, 1.0), dtype=torch.float64),
        "grad": torch.randn(SHAPE, generator=g, dtype=torch.float64),
        "vth": uniform(0.3, 1.0),
        "alpha": uniform(0.7, 1.5),
        "kappa0": uniform(0.5, 1.5),
    }


def width(rule: str, inputs: dict) -> float:
    """The surrogate width, written from the rules' definitions (not imported from ours)."""
    if rule == "fixed":
        return inputs["kappa0"]
    tau = 1 / (1 + math.exp(-inputs["rho"].item()))
    return 2 * inputs["vth"] * math.sqrt(1 + tau * tau)


def ours(inputs: dict, rule: str, backend: str) -> dict:
    leaves = {k: inputs[k].clone().to(DEVICE if backend == "triton" else "cpu").requires_grad_()
              for k in ("x", "gamma", "beta", "rho")}
    running_mean = torch.zeros(SHAPE[2], dtype=torch.float64, device=leaves["x"].device)
    running_var = torch.ones_like(running_mean)
    spikes = M.tdbn_plif(leaves["x"], leaves["gamma"], leaves["beta"], leaves["rho"],
                         running_mean=running_mean, running_var=running_var, training=True,
                         momentum=MOMENTUM, eps=EPS, vth=inputs["vth"], alpha=inputs["alpha"],
                         surrogate="rect", width_rule=rule,
                         kappa0=inputs["kappa0"] if rule == "fixed" else None, backend=backend)
    grads = torch.autograd.grad(spikes, list(leaves.values()), inputs["grad"].to(spikes.device))
    return {"spikes": spikes.detach().cpu(), **{k: g.cpu() for k, g in zip(leaves, grads)},
            "running_mean": running_mean.cpu(), "running_var": running_var.cpu()}


def spikingjelly(inputs: dict, rule: str) -> dict:
    """SpikingJelly's outputs and gradients, and ``scale``: what each one's error is measured
    against (the summed magnitudes of its terms; x's gradient: its largest entry)."""
    T, B, C, H, W = SHAPE
    x = inputs["x"].clone().requires_grad_()
    gamma = inputs["gamma"].clone().requires_grad_()
    beta = inputs["beta"].clone().requires_grad_()
    running_mean = torch.zeros(C, dtype=torch.float64)
    running_var = torch.ones_like(running_mean)
    scale = inputs["alpha"] * inputs["vth"]
    y = F.batch_norm(x.flatten(0, 1), running_mean, running_var, weight=gamma * scale, bias=beta,
                     training=True, momentum=MOMENTUM, eps=EPS).unflatten(0, (T, B))
    node = sj_neuron.ParametricLIFNode(
        decay_input=False, v_threshold=inputs["vth"], v_reset=0.0, detach_reset=False,
        surrogate_function=sj_surrogate.Rect(alpha=1 / width(rule, inputs)), step_mode="m")
    node.w = torch.nn.Parameter(-inputs["rho"].clone())  # its decay 1 - sigmoid(w) is our sigmoid(rho)
    spikes = node(y)
    gx, ggamma, gbeta, gw, gy = torch.autograd.grad(spikes, [x, gamma, beta, node.w, y], inputs["grad"])
    with torch.no_grad():  # the terms each sum gradient adds up
        dims = (0, 1, 3, 4)
        xhat = (y - beta.view(1, 1, C, 1, 1)) / (gamma * scale).view(1, 1, C, 1, 1)
        tau = torch.sigmoid(inputs["rho"])
        h, kept = y[0], []
        for t in range(1, T):  # V[t] = tau * V[t-1] * (1 - S[t-1]) + y[t]: dV[t]/dtau's factor
            kept.append(h * (1 - spikes[t - 1]))
            h = tau * kept[-1] + y[t]
        terms = {
            "x": gx.abs().max(),
            "gamma": (gy * xhat * scale).abs().sum(dims),
            "beta": gy.abs().sum(dims),
            "rho": tau * (1 - tau) * (gy[1:] * torch.stack(kept)).abs().sum(),
            "running_mean": MOMENTUM * x.abs().mean(dims),  # the batch mean's terms
            "running_var": running_var,  # a sum of squares: no cancellation
        }
    return {"spikes": spikes.detach(), "x": gx, "gamma": ggamma, "beta": gbeta, "rho": -gw,
            "running_mean": running_mean, "running_var": running_var, "scale": terms}


def relative_errors(got: dict, want: dict) -> dict:
    """Largest error of each gradient and running statistic over its scale (a channel with no
    terms, e.g. no membrane inside the surrogate window, must agree exactly: 0/0 counts as 0)."""
    return {k: ((got[k] - want[k]).abs() / want["scale"][k]).nan_to_num(nan=0.0, posinf=math.inf).max().item()
            for k in want["scale"]}


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("rule", ["fixed", "lsg"])
def test_spikingjelly_gives_our_spikes_and_gradients(rule, backend):
    seed = int.from_bytes(os.urandom(4), "little")  # fresh inputs each run; the seed reproduces them
    inputs = fresh_inputs(seed)
    want = spikingjelly(inputs, rule)
    got = ours(inputs, rule, backend)
    assert want["spikes"].dtype == torch.float64
    assert 0 < want["spikes"].sum() < want["spikes"].numel(), f"seed {seed}: all or no spikes"
    assert torch.equal(got["spikes"], want["spikes"]), f"seed {seed}: spikes differ"
    assert want["rho"].abs() > 0 and want["gamma"].abs().max() > 0, f"seed {seed}: no gradient to compare"
    errors = relative_errors(got, want)
    assert max(errors.values()) <= RTOL, f"seed {seed}: {errors}"
