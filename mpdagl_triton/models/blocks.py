"""Building blocks: convolutions on time-folded batches followed by tdBN -> PLIF.

Initialisation (:func:`init_weights`, applied by :class:`~mpdagl_triton.models.SpikingNetwork` to
every architecture): each ``Conv2d`` weight is drawn from ``kaiming_normal_(mode="fan_out",
nonlinearity="relu")``, std ``sqrt(2 / (out_channels * kh * kw))``, and a conv bias (none of the
zoo's convs has one) is zeroed; linear layers keep PyTorch's default (``kaiming_uniform_(a=sqrt(5))``
weights, uniform bias); tdBN keeps gamma = 1, beta = 0 and tau = 0.2 (``TdBNPLIF``'s defaults).
The reference per architecture:

- ``resnet19``, ``vggsnn``: the MPD-AGL authors' code (``_initialize_weights`` of their ResNet19
  and VGGSNN: convs kaiming-normal fan_out relu, linear layers untouched).
- ``resnet18``: torchvision's ResNet, the usual reference implementation of He et al. (2016):
  convs kaiming-normal fan_out relu, batch norm 1 / 0, the final linear layer untouched.
- ``vgg13``: torchvision's VGG (Simonyan & Zisserman, 2015): convs kaiming-normal fan_out relu;
  it also draws its linear layers from N(0, 0.01) with zero bias, but those are VGG's three
  4096-wide layers, which our single flattening head replaces, so the head keeps PyTorch's
  default as the authors' heads do.
- ``tiny``: no published reference; the same rule as the others.

Why it matters although tdBN follows every conv: SGD's effective step on a scale-free weight goes
as 1 / ||w||^2, so PyTorch's default conv init (std 1 / sqrt(3 fan_in), 2.45x smaller on a
128 -> 128 3x3 conv) would train those convs at about 6x the authors' effective learning rate.
"""

from __future__ import annotations

from functools import partial

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.nn import functional as F

from mpdagl_triton import layers
from mpdagl_triton.errors import InvalidInput
from mpdagl_triton.layers import TdBNPLIF


def fold(x: Tensor) -> Tensor:
    """Time into the batch, ``[T, B, ...] -> [T*B, ...]``, for convolutions and pooling (a view).

    Example:
        >>> fold(torch.zeros(4, 2, 3, 5, 5)).shape
        torch.Size([8, 3, 5, 5])
    """
    return rearrange(x, "t b ... -> (t b) ...")


def unfold(x: Tensor, timesteps: int) -> Tensor:
    """Time out of the batch, ``[T*B, ...] -> [T, B, ...]``, for the neurons (a view).

    Example:
        >>> unfold(torch.zeros(8, 3, 5, 5), timesteps=4).shape
        torch.Size([4, 2, 3, 5, 5])
    """
    return rearrange(x, "(t b) ... -> t b ...", t=timesteps)


def init_weights(module: nn.Module) -> nn.Module:
    """Initialise every ``Conv2d`` under ``module`` as the authors do (kaiming-normal, fan_out,
    relu; bias zero) and leave every other layer as PyTorch built it; returns ``module``.

    Works on any network, not only the zoo's: ``init_weights(my_net)`` after building it.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def pooled_size(arch: str, input_size: int, pools: int) -> int:
    """Side of the feature map after ``pools`` 2x2 poolings of an ``input_size`` image: what a
    flattening classifier is built for. Too small an image is refused here, where the network is
    built, rather than by a pooling layer at the first forward."""
    size = input_size // 2 ** pools
    if size < 1:
        raise InvalidInput(f"{arch} halves its input {pools} times before its classifier, so "
                         f"{input_size}x{input_size} images leave no feature map; it needs at least "
                         f"{2 ** pools}x{2 ** pools}")
    return size


class ConvSpike(nn.Module):
    """conv (no bias) -> tdBN -> PLIF: ``[T, B, C_in, H, W] -> [T, B, C_out, H / stride, W / stride]``.

    The convolution sees time folded into the batch; ``neuron_options`` go to its
    :class:`~mpdagl_triton.TdBNPLIF` (width_rule, surrogate, vth, ...). ``forward(x, residual,
    skip)``: a residual (the output's shape) enters before firing, a skip is added to the spikes.

    Example:
        >>> ConvSpike(3, 8, stride=2)(torch.rand(2, 4, 3, 16, 16)).shape
        torch.Size([2, 4, 8, 8, 8])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 **neuron_options):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2,
                              bias=False)
        self.neuron = TdBNPLIF(out_channels, **neuron_options)

    def forward(self, x: Tensor, residual: Tensor | None = None, skip: Tensor | None = None) -> Tensor:
        if folding(self.neuron, x):  # eval without gradients: tdBN folded into the convolution
            y = unfold(folded_conv(self.conv, self.neuron, fold(x)), x.shape[0])
            if residual is not None:
                y = y + residual
            return self.neuron.fire(y, skip)
        return self.neuron(unfold(self.conv(fold(x)), x.shape[0]), residual, skip)


def folding(neuron: TdBNPLIF, x: Tensor) -> bool:
    """Whether the block feeding ``neuron`` folds its tdBN into its convolution (or linear layer)
    for this call: the layer's inference path (eval, no gradients, reference backend) with
    ``layers.INFERENCE_PATH == "fold"``. ``x``: the block's input, any shape.

    Example:
        >>> layer = TdBNPLIF(4).eval()
        >>> folding(layer, torch.zeros(2, 1, 4)), torch.no_grad()(folding)(layer, torch.zeros(2, 1, 4))
        (False, True)
    """
    return layers.INFERENCE_PATH == "fold" and isinstance(neuron, TdBNPLIF) and neuron.inference(x)


def folded_conv(conv: nn.Conv2d, neuron: TdBNPLIF, x: Tensor) -> Tensor:
    """``conv(x)`` with ``neuron``'s eval-mode tdBN folded into its weight and bias: the tdBN'd
    input of the neuron, ``[N, C, H, W]`` for ``x`` ``[N, C_in, H_in, W_in]``.

    Example:
        >>> conv, layer = nn.Conv2d(2, 4, 3, padding=1, bias=False), TdBNPLIF(4).eval()
        >>> folded_conv(conv, layer, torch.zeros(5, 2, 6, 6)).shape
        torch.Size([5, 4, 6, 6])
    """
    weight, bias = neuron.fold(conv.weight)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class Pool(nn.Module):
    """Average pooling per timestep: ``[T, B, C, H, W] -> [T, B, C, H / k, W / k]`` (spikes averaged
    keep a useful gradient, unlike max pooling).

    Example:
        >>> Pool(2)(torch.rand(2, 4, 3, 8, 8)).shape
        torch.Size([2, 4, 3, 4, 4])
    """

    def __init__(self, kernel_size: int = 2):
        super().__init__()
        self.pool = nn.AvgPool2d(kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        return unfold(self.pool(fold(x)), x.shape[0])


class Stem(nn.Module):
    """First conv -> tdBN -> PLIF with direct encoding.

    Images ``[B, C, H, W]`` are convolved once and the result is the neuron's input at every
    timestep (exact, since the image is the same at every timestep; the fused op reads it in place
    and sums its gradient over T itself). Event frames ``[B, T, C, H, W]`` are convolved per
    timestep.

    On CUDA the stem's input goes channels-last (a copy of the network's smallest activation), and
    with it every activation after it: a convolution's output follows its input's memory format.
    Inductor runs a compiled model's convolutions channels-last whatever the model's format, and an
    NCHW activation reaching a fused layer is then copied to NCHW and back around it (``python -m
    bench.launches --nchw``: a ResNet-19 T=2 B=128 NCHW step measured 1.31x the ANN floor's).
    ``channels_last`` (True/False) overrides the choice.

    Shapes: images ``[B, C_in, H, W]`` or frames ``[B, T, C_in, H, W]`` -> spikes ``[T, B, C_out, H, W]``.

    Example:
        >>> Stem(1, 8, timesteps=4)(torch.rand(2, 1, 8, 8)).shape
        torch.Size([4, 2, 8, 8, 8])
    """

    channels_last: bool | None = None  # None: on CUDA

    def __init__(self, in_channels: int, out_channels: int, timesteps: int, **neuron_options):
        super().__init__()
        self.timesteps = timesteps
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.neuron = TdBNPLIF(out_channels, **neuron_options)

    def forward(self, x: Tensor) -> Tensor:
        conv = partial(folded_conv, self.conv, self.neuron) if folding(self.neuron, x) else self.conv
        neuron = self.neuron.fire if conv is not self.conv else self.neuron
        if x.dim() == 4:
            return neuron(conv(self._in_format(x)).unsqueeze(0), timesteps=self.timesteps)
        frames = x.transpose(0, 1)  # [T, B, C, H, W]
        return neuron(unfold(conv(self._in_format(fold(frames))), frames.shape[0]))

    def _in_format(self, x: Tensor) -> Tensor:
        channels_last = x.is_cuda if self.channels_last is None else self.channels_last
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class SpikingLinear(nn.Module):
    """linear (no bias) -> tdBN -> PLIF: ``[T, B, in_features] -> [T, B, out_features]``.

    Example:
        >>> SpikingLinear(16, 4)(torch.rand(2, 3, 16)).shape
        torch.Size([2, 3, 4])
    """

    def __init__(self, in_features: int, out_features: int, **neuron_options):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=False)
        self.neuron = TdBNPLIF(out_features, **neuron_options)

    def forward(self, x: Tensor) -> Tensor:
        if folding(self.neuron, x):
            return self.neuron.fire(F.linear(x, *self.neuron.fold(self.linear.weight)))
        return self.neuron(self.linear(x))
