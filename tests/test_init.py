"""Weight initialisation of the zoo: convs kaiming-normal (fan_out, relu) as the authors' code
does, linear layers PyTorch's default, tdBN gamma 1 / beta 0 / tau 0.2, reproducible per seed.

Bounds are sampling error, derived from each layer's weight count: with n independent draws the
sample std of N(0, s^2) has relative standard error 1 / sqrt(2 (n - 1)), its mean s / sqrt(n), and
a fraction p of draws beyond a cut has standard error sqrt(p (1 - p) / n). Z sigmas keep the
chance of a false failure over every layer of every architecture below 1e-6.
"""

import math

import pytest
import torch
from torch import nn

from mpdagl_triton import TdBNPLIF, models

Z = 6.0
#: (in_channels, input_size) each architecture is built for: the paper's inputs
INPUTS = {"resnet19": (3, 32), "resnet18": (3, 32), "vggsnn": (2, 48), "vgg13": (3, 64), "tiny": (1, 8)}
#: P(|X| > 2 s) for X ~ N(0, s^2); a uniform law of the same std has none beyond 1.73 s
NORMAL_TAIL_2S = math.erfc(2 / math.sqrt(2))


def build(arch: str, seed: int) -> models.SpikingNetwork:
    torch.manual_seed(seed)
    channels, size = INPUTS[arch]
    return models.create(arch, num_classes=10, T=2, in_channels=channels, input_size=size)


def layers(net: nn.Module, kind: type) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in net.named_modules() if isinstance(m, kind)]


@pytest.mark.parametrize("arch", sorted(INPUTS))
def test_convs_are_kaiming_normal_fan_out(arch):
    convs = layers(build(arch, seed=0), nn.Conv2d)
    assert convs
    for name, conv in convs:
        w = conv.weight.detach().double().flatten()
        n = w.numel()
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        s = math.sqrt(2.0 / fan_out)
        std = w.std().item()
        assert abs(std / s - 1) < Z / math.sqrt(2 * (n - 1)), (name, std, s)
        assert abs(w.mean().item()) < Z * s / math.sqrt(n), name
        tail = (w.abs() > 2 * s).double().mean().item()  # normal, not uniform of the same std
        p = NORMAL_TAIL_2S
        assert abs(tail - p) < Z * math.sqrt(p * (1 - p) / n), (name, tail)
        assert conv.bias is None


@pytest.mark.parametrize("arch", sorted(INPUTS))
def test_linear_layers_keep_pytorch_default(arch):
    """nn.Linear's own init: weight and bias uniform on +-1/sqrt(fan_in) (kaiming_uniform_ with
    a = sqrt(5) gives that bound), so std bound / sqrt(3)."""
    linears = layers(build(arch, seed=0), nn.Linear)
    assert linears
    for name, linear in linears:
        bound = 1 / math.sqrt(linear.in_features)
        w = linear.weight.detach().double().flatten()
        assert w.abs().max().item() <= bound, name
        n = w.numel()
        # the std of U(-b, b) has relative standard error sqrt(0.8 / (4 n)) (excess kurtosis -1.2)
        assert abs(w.std().item() / (bound / math.sqrt(3)) - 1) < Z * math.sqrt(0.2 / n), name
        if linear.bias is not None:
            assert linear.bias.detach().abs().max().item() <= bound, name


@pytest.mark.parametrize("arch", sorted(INPUTS))
def test_tdbn_starts_at_gamma_one_beta_zero_tau_0_2(arch):
    neurons = layers(build(arch, seed=0), TdBNPLIF)
    assert neurons
    for name, layer in neurons:
        assert torch.equal(layer.gamma.detach(), torch.ones_like(layer.gamma)), name
        assert torch.equal(layer.beta.detach(), torch.zeros_like(layer.beta)), name
        assert layer.tau.item() == pytest.approx(0.2, rel=1e-6), name


@pytest.mark.parametrize("arch", sorted(INPUTS))
def test_same_seed_same_model(arch):
    a, b = build(arch, seed=5).state_dict(), build(arch, seed=5).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = build(arch, seed=6).state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_init_weights_works_on_any_network():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(16, 64, 3, bias=True), nn.ReLU(), nn.Conv2d(64, 256, 1))
    for conv in (net[0], net[2]):
        nn.init.constant_(conv.bias, 1.0)
    assert models.init_weights(net) is net
    for conv in (net[0], net[2]):
        s = math.sqrt(2.0 / (conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]))
        n = conv.weight.numel()
        assert abs(conv.weight.detach().double().std().item() / s - 1) < Z / math.sqrt(2 * (n - 1))
        assert torch.equal(conv.bias.detach(), torch.zeros_like(conv.bias))
