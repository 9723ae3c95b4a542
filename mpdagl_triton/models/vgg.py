"""Spiking VGGs: ``vggsnn`` (CIFAR10-DVS, 2x48x48) and ``vgg13`` (Tiny-ImageNet, 3x64x64).

"P" marks 2x2 average pooling (spikes averaged keep a useful gradient, unlike max pooling).
Heads: ``vggsnn`` flattens 512x3x3 into one linear layer with bias (docs/method.md#architectures);
``vgg13`` flattens its 512x2x2 map into one linear layer with bias, our choice: it keeps the
spatial layout and avoids VGG's 4096-wide dense layers, which dominate memory and overfit here.
"""

from __future__ import annotations

from torch import Tensor, nn

from .blocks import ConvSpike, Pool, Stem, pooled_size

VGGSNN_LAYOUT = [64, 128, "P", 256, 256, "P", 512, 512, "P", 512, 512, "P"]
VGG13_LAYOUT = [64, 64, "P", 128, 128, "P", 256, 256, "P", 512, 512, "P", 512, 512, "P"]


class SpikingVGG(nn.Module):
    fixed_input_size = True  # the classifier flattens the last feature map

    def __init__(self, arch: str, layout: list, num_classes: int, timesteps: int, in_channels: int,
                 input_size: int, **neuron_options):
        super().__init__()
        size = pooled_size(arch, input_size, layout.count("P"))
        first, *rest = layout
        self.stem = Stem(in_channels, first, timesteps, **neuron_options)
        layers, channels = [], first
        for item in rest:
            if item == "P":
                layers.append(Pool(2))
            else:
                layers.append(ConvSpike(channels, item, **neuron_options))
                channels = item
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels * size * size, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.features(self.stem(x))  # [T, B, C, H, W]
        return self.classifier(h.flatten(2))


def vggsnn(num_classes: int, timesteps: int, in_channels: int = 2, input_size: int = 48,
           **neuron_options) -> SpikingVGG:
    return SpikingVGG("vggsnn", VGGSNN_LAYOUT, num_classes, timesteps, in_channels, input_size,
                      **neuron_options)


def vgg13(num_classes: int, timesteps: int, in_channels: int = 3, input_size: int = 64,
          **neuron_options) -> SpikingVGG:
    return SpikingVGG("vgg13", VGG13_LAYOUT, num_classes, timesteps, in_channels, input_size,
                      **neuron_options)
