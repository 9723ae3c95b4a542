"""Spiking ResNets: ``resnet19`` (the MPD-AGL authors' layout) and ``resnet18``.

BasicBlock (docs/method.md#architectures): ``out = neuron2(tdBN2(conv2(neuron1(tdBN1(conv1(x)))))) + shortcut(x)``,
the addition after the neuron, so block outputs are small integers rather than spikes. The
shortcut is the identity, or conv1x1(stride) -> tdBN -> PLIF when width or stride changes.
"""

from __future__ import annotations

from torch import Tensor, nn

from .blocks import ConvSpike, SpikingLinear, Stem, fold, unfold


class BasicBlock(nn.Module):
    """The residual block of our ResNets: two :class:`ConvSpike` with the shortcut added to the
    second one's spikes (after the neuron, so block outputs are small integers, as the authors'
    ResNet-19 has it). The shortcut is the identity, or a 1x1 :class:`ConvSpike` when the width or
    the stride changes. ``[T, B, C_in, H, W] -> [T, B, C_out, H / stride, W / stride]``.

    Example:
        >>> import torch
        >>> BasicBlock(8, 16, stride=2)(torch.rand(2, 3, 8, 8, 8)).shape
        torch.Size([2, 3, 16, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, **neuron_options):
        super().__init__()
        self.branch1 = ConvSpike(in_channels, out_channels, 3, stride, **neuron_options)
        self.branch2 = ConvSpike(out_channels, out_channels, 3, 1, **neuron_options)
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = ConvSpike(in_channels, out_channels, 1, stride, **neuron_options)

    def forward(self, x: Tensor) -> Tensor:
        # the shortcut is added by the second neuron as it writes its spikes: no separate add pass
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return self.branch2(self.branch1(x), skip=shortcut)


class SpikingResNet(nn.Module):
    """Stem -> stages of BasicBlocks -> global average pool -> head; ``[T, B, classes]`` out."""

    fixed_input_size = False  # the global pool takes any image size

    def __init__(self, widths: list[int], blocks: list[int], strides: list[int], stem_width: int,
                 hidden: int | None, num_classes: int, timesteps: int, in_channels: int,
                 **neuron_options):
        super().__init__()
        self.stem = Stem(in_channels, stem_width, timesteps, **neuron_options)
        layers, channels = [], stem_width
        for width, count, stride in zip(widths, blocks, strides):
            for i in range(count):
                layers.append(BasicBlock(channels, width, stride if i == 0 else 1, **neuron_options))
                channels = width
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        # resnet19: linear -> tdBN -> PLIF -> linear (no biases); resnet18: one linear with bias
        self.hidden = None if hidden is None else SpikingLinear(channels, hidden, **neuron_options)
        self.classifier = nn.Linear(hidden or channels, num_classes, bias=hidden is None)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stages(self.stem(x))
        h = unfold(self.pool(fold(h)).flatten(1), h.shape[0])  # [T, B, C]
        if self.hidden is not None:
            h = self.hidden(h)
        return self.classifier(h)


def resnet19(num_classes: int, timesteps: int, in_channels: int = 3, input_size: int = 32,
             **neuron_options) -> SpikingResNet:
    """The authors' ResNet-19: 128-wide stem, stages 128/256/512 x 3/3/2, head 512 -> 256 -> classes.

    Global pooling makes it take any input size.
    """
    return SpikingResNet([128, 256, 512], [3, 3, 2], [1, 2, 2], 128, 256, num_classes, timesteps,
                         in_channels, **neuron_options)


def resnet18(num_classes: int, timesteps: int, in_channels: int = 3, input_size: int = 32,
             **neuron_options) -> SpikingResNet:
    """ResNet-18 (CIFAR stem: one 3x3 conv, no max pool): stages 64/128/256/512 x 2, linear head."""
    return SpikingResNet([64, 128, 256, 512], [2, 2, 2, 2], [1, 2, 2, 2], 64, None, num_classes,
                         timesteps, in_channels, **neuron_options)
