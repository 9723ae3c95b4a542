"""Modules, the width rules at initialisation, and a hand-computed PLIF gradient."""

import math

import pytest
import torch

from mpdagl_triton import PLIF, TdBN, TdBNPLIF, kappas
from support.oracle import DEVICE


@pytest.mark.parametrize(
    "width_rule,first,rest",
    [("mpdagl", 1.0, 1.0198039), ("lsg", 1.0198039, 1.0198039), ("fixed", 1.0, 1.0)],
)
def test_width_rules_at_init(width_rule, first, rest):
    layer = TdBNPLIF(8, width_rule=width_rule)
    k1, kr = layer.kappas()
    assert k1.dim() == 0 and kr.dim() == 0
    assert float(k1) == pytest.approx(first, abs=1e-6)
    assert float(kr) == pytest.approx(rest, abs=1e-6)


def test_kappas_rho_or_tau_and_floor():
    gamma = torch.full((4,), 2.0)
    rho = torch.tensor(math.log(0.5 / 0.5))  # tau = 0.5
    k1, kr = kappas(gamma, rho, vth=0.25, width_rule="mpdagl")
    assert float(k1) == pytest.approx(2 * 2.0 * 0.25)
    assert float(kr) == pytest.approx(2 * math.sqrt(1.25) * 2.0 * 0.25)
    k1_tau, _ = kappas(gamma, 0.5, vth=0.25, width_rule="mpdagl")
    assert float(k1_tau) == float(k1)
    # mean(gamma) = 0 would give a zero width: floored at 1e-3
    k1, kr = kappas(torch.tensor([1.0, -1.0]), 0.2, vth=0.5)
    assert float(k1) == pytest.approx(2 * 1e-3 * 0.5)
    # a negative mean uses its magnitude
    k1, _ = kappas(torch.tensor([-2.0, -2.0]), 0.2, vth=0.5)
    assert float(k1) == pytest.approx(2.0)
    k1, kr = kappas(gamma, rho, width_rule="fixed", kappa0=0.7)
    assert float(k1) == pytest.approx(0.7) and float(kr) == pytest.approx(0.7)


def _copy_into_unfused(fused: TdBNPLIF, bn: TdBN, neuron: PLIF) -> None:
    with torch.no_grad():
        bn.gamma.copy_(fused.gamma)
        bn.beta.copy_(fused.beta)
        if fused.learn_tau:
            neuron.rho.copy_(fused.rho)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("learn_tau", [True, False])
def test_fused_module_equals_tdbn_then_plif(backend, learn_tau):
    torch.manual_seed(0)
    opts = dict(vth=0.4, tau=0.3, learn_tau=learn_tau, surrogate="triangle", width_rule="mpdagl")
    fused = TdBNPLIF(5, backend=backend, **opts).double().to(DEVICE)
    bn = TdBN(5, vth=0.4).double().to(DEVICE)
    neuron = PLIF(**opts).double().to(DEVICE)
    with torch.no_grad():
        fused.gamma.uniform_(0.5, 1.5)
        fused.beta.normal_(0, 0.3)
    _copy_into_unfused(fused, bn, neuron)
    x = torch.randn(4, 3, 5, 6, 6, dtype=torch.float64, device=DEVICE) * 2
    grad = torch.randn_like(x)
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    s1 = fused(x1)
    s2 = neuron(bn(x2), bn.gamma)
    assert torch.equal(s1, s2)
    s1.backward(grad)
    s2.backward(grad)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fused.gamma.grad, bn.gamma.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fused.beta.grad, bn.beta.grad, rtol=1e-10, atol=1e-12)
    if learn_tau:
        torch.testing.assert_close(fused.rho.grad, neuron.rho.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fused.running_mean, bn.running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused.running_var, bn.running_var, rtol=1e-12, atol=1e-12)
    fused.eval(), bn.eval()
    assert torch.equal(fused(x), neuron(bn(x), bn.gamma))


def test_plif_gradient_by_hand():
    """One neuron, T = 2, rect surrogate: the reset path is not detached (SPEC section 3)."""
    tau_value, vth = 0.5, 0.5
    neuron = PLIF(vth=vth, tau=tau_value, learn_tau=True, width_rule="fixed", kappa0=2.0).double()
    y = torch.tensor([[0.7], [0.1]], dtype=torch.float64, requires_grad=True)
    s = neuron(y)
    # V1 = 0.7 -> S1 = 1; V2 = tau * V1 * (1 - S1) + 0.1 = 0.1 -> S2 = 0
    assert s.flatten().tolist() == [1.0, 0.0]
    g1, g2 = 0.3, 1.0
    (s * torch.tensor([[g1], [g2]], dtype=torch.float64)).sum().backward()
    h = 1 / 2.0  # rect, kappa = 2: |u| < 1 everywhere here
    dv2 = g2 * h
    # dL/dS1 = g1 + dV2/dS1 * dv2 = g1 - tau * V1 * dv2; dV2/dV1 = tau * (1 - S1) = 0
    dv1 = (g1 - tau_value * 0.7 * dv2) * h
    assert y.grad.flatten().tolist() == pytest.approx([dv1, dv2])
    # dL/drho = dv2 * V1 * (1 - S1) * tau (1 - tau) = 0 since S1 = 1
    assert float(neuron.rho.grad) == pytest.approx(0.0)


def test_module_repr_and_tau():
    layer = TdBNPLIF(3, tau=0.25, learn_tau=False, width_rule="fixed", kappa0=0.5)
    assert "fixed" in repr(layer) and "kappa0=0.5" in repr(layer)
    assert repr(TdBN(4, vth=0.7)) == "TdBN(4, vth=0.7, alpha=1.0)"
    assert float(layer.tau) == pytest.approx(0.25)
    assert layer.rho is None
    assert float(TdBNPLIF(3).tau.detach()) == pytest.approx(0.2)


def test_plif_needs_gamma_for_mpdagl():
    with pytest.raises(ValueError, match="needs gamma"):
        PLIF()(torch.zeros(2, 3))
