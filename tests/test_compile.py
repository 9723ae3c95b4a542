"""torch.library registration: opcheck, and torch.compile(fullgraph=True) equal to eager."""

import pytest
import torch
from torch import nn

from mpdagl_triton import TdBNPLIF, kappas
from mpdagl_triton.ops import _bwd_op, _fwd_op
from oracle import DEVICE, to_channels_last


def _fwd_args(x, residual=None, running=False):
    C = x.shape[2]
    f64 = dict(dtype=torch.float64, device=DEVICE)
    gamma = torch.rand(C, **f64).add_(0.5).requires_grad_()
    beta = torch.randn(C, **f64).mul_(0.3).requires_grad_()
    rho = torch.tensor(-1.0, **f64, requires_grad=True)
    tau = torch.sigmoid(rho.detach()).requires_grad_()
    k1, kr = kappas(gamma, rho)
    rm = torch.zeros(C, **f64) if running else None
    rv = torch.ones(C, **f64) if running else None
    return (x, gamma, beta, tau, k1, kr, residual, rm, rv, 1e-5, 0.5, 1.0, "rect", False)


@pytest.mark.parametrize("variant", ["plain", "residual", "eval", "channels_last"])
def test_opcheck_forward(variant):
    x = torch.randn(3, 2, 4, 5, 5, dtype=torch.float64, device=DEVICE)
    if variant == "channels_last":
        x = to_channels_last(x)
    x.requires_grad_()
    residual = torch.randn_like(x).requires_grad_() if variant == "residual" else None
    torch.library.opcheck(_fwd_op, _fwd_args(x, residual, running=variant == "eval"))


@pytest.mark.parametrize("batch_stats", [True, False])
def test_opcheck_backward(batch_stats):
    x = torch.randn(3, 2, 4, 6, dtype=torch.float64, device=DEVICE)
    x_, gamma, beta, tau, k1, kr, *_ = _fwd_args(x)
    residual = torch.randn_like(x)
    mean, var = x.mean(dim=(0, 1, 3)), x.var(dim=(0, 1, 3), unbiased=False)
    args = (torch.randn_like(x), x, gamma.detach(), beta.detach(), tau.detach(), k1, kr, residual,
            mean, var, 1e-5, 0.5, 1.0, "atan", batch_stats, False)
    torch.library.opcheck(_bwd_op, args)


class TwoLayer(nn.Module):
    def __init__(self, backend):
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, padding=1, bias=False)
        self.neuron1 = TdBNPLIF(6, backend=backend)
        self.neuron2 = TdBNPLIF(6, backend=backend, width_rule="lsg", surrogate="sigmoid")

    def forward(self, x):  # x [T, B, 2, H, W]
        T, B = x.shape[:2]
        h = self.conv(x.flatten(0, 1)).unflatten(0, (T, B))
        s = self.neuron1(h)
        return self.neuron2(h, residual=s)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_compile_fullgraph_equals_eager(backend):
    torch.manual_seed(0)
    eager = TwoLayer(backend).double().to(DEVICE)
    compiled_model = TwoLayer(backend).double().to(DEVICE)
    compiled_model.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_model, fullgraph=True, backend="aot_eager")
    x = torch.randn(3, 2, 2, 6, 6, dtype=torch.float64, device=DEVICE) * 2
    grad = torch.randn(3, 2, 6, 6, 6, dtype=torch.float64, device=DEVICE)
    out_eager = eager(x)
    out_compiled = compiled(x)
    assert torch.equal(out_eager, out_compiled)
    out_eager.backward(grad)
    out_compiled.backward(grad)
    for (name, p1), (_, p2) in zip(eager.named_parameters(), compiled_model.named_parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-10, atol=1e-12, msg=name)
    for (name, b1), (_, b2) in zip(eager.named_buffers(), compiled_model.named_buffers()):
        torch.testing.assert_close(b1, b2, rtol=1e-12, atol=1e-12, msg=name)


def test_compile_inductor_no_graph_breaks():
    """The inductor backend too, counting graphs: one forward graph means no break."""
    torch._dynamo.reset()
    torch.manual_seed(1)
    model = TwoLayer("triton").to(DEVICE)
    reference_model = TwoLayer("triton").to(DEVICE)
    reference_model.load_state_dict(model.state_dict())
    counters = torch._dynamo.utils.counters
    counters.clear()
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 2, 2, 5, 5, device=DEVICE)
    out = compiled(x)
    out.sum().backward()
    assert counters["stats"]["unique_graphs"] == 1
    expected = reference_model(x)
    expected.sum().backward()
    assert torch.equal(out, expected)
    for (name, p1), (_, p2) in zip(model.named_parameters(), reference_model.named_parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-5, atol=1e-6, msg=name)
