"""The readable reference keeps little for the backward (it is the CPU path), and its lean
autograd functions give exactly what autograd gives for the plain formulas."""

import pytest
import torch

from mpdagl_triton import reference
from mpdagl_triton.surrogates import surrogate_derivative


class PlainSpike(torch.autograd.Function):
    """S = [u >= 0]; dS/du = h(u; kappa): the surrogate on V - Vth as autograd would chain it."""

    @staticmethod
    def forward(ctx, u, kappa, surrogate):
        ctx.save_for_backward(u, kappa)
        ctx.surrogate = surrogate
        return (u >= 0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad):
        u, kappa = ctx.saved_tensors
        return grad * surrogate_derivative(u, kappa, ctx.surrogate), None, None


def plain_plif(y, tau, kappa_first, kappa_rest, vth, surrogate):
    """V_t = tau * V_{t-1} * (1 - S_{t-1}) + y_t from zeros, every product left to autograd."""
    v = torch.zeros_like(y[0])
    s = torch.zeros_like(y[0])
    spikes = []
    for t in range(y.shape[0]):
        v = tau * v * (1 - s) + y[t]
        spikes.append(PlainSpike.apply(v - vth, kappa_first if t == 0 else kappa_rest, surrogate))
        s = spikes[-1]
    return torch.stack(spikes)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T", [1, 4])
@pytest.mark.parametrize("surrogate", ["rect", "sigmoid"])
def test_plif_is_the_plain_formula_bit_for_bit(dtype, T, surrogate):
    g = torch.Generator().manual_seed(T)
    y0 = (torch.randn(T, 3, 4, 5, generator=g, dtype=torch.float64) * 0.6 + 0.4).to(dtype)
    rho0 = torch.tensor(-0.8, dtype=dtype)
    grad = torch.randn(T, 3, 4, 5, generator=g, dtype=torch.float64).to(dtype)
    kappas = torch.tensor(0.7, dtype=dtype), torch.tensor(1.3, dtype=dtype)
    results = []
    for plif in (reference.plif, lambda y, tau, k1, kr, vth, surrogate: plain_plif(y, tau, k1, kr, vth, surrogate)):
        y, rho = y0.clone().requires_grad_(), rho0.clone().requires_grad_()
        spikes = plif(y, torch.sigmoid(rho), *kappas, vth=0.5, surrogate=surrogate)
        results.append([spikes, *torch.autograd.grad(spikes, [y, rho], grad)])
    lean, plain = results
    assert 0 < plain[0].sum() < plain[0].numel()
    for a, b in zip(lean, plain):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_the_reference_keeps_little_for_the_backward():
    """tdBN keeps three tensors of x's size (x - mean, its scaled copy, x-hat); PLIF keeps V per
    step, tau * V per step after the first, and the spikes as booleans. The plain formulas also
    kept 1 - S and V - Vth per step and a zero V at the first step: 27 bytes an element of
    float32 x at T = 4 instead of 19.75."""
    T, shape = 4, (4, 8, 16, 8, 8)
    x = torch.randn(shape, requires_grad=True)
    gamma, beta = torch.ones(16, requires_grad=True), torch.zeros(16, requires_grad=True)
    rho = torch.tensor(-1.0, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        reference.tdbn_plif(x, gamma, beta, rho)
    kept = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in saved}  # once each
    per_element = sum(n for n in kept.values() if n > 16 * 8) / x.numel()  # not the [C] and 0-d ones
    assert per_element == 3 * 4 + 4 + (T - 1) / T * (4 + 1)
