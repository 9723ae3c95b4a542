"""``tiny``: a small spiking CNN for the embedded digits default (8x8 or 16x16 grey images)."""

from __future__ import annotations

from torch import Tensor, nn

from .blocks import ConvSpike, Pool, Stem, pooled_size


class TinyCNN(nn.Module):
    """32 -> P -> 64 -> P -> linear; ``[T, B, classes]`` out."""

    fixed_input_size = True  # the classifier flattens the last feature map

    def __init__(self, num_classes: int, timesteps: int, in_channels: int = 1, input_size: int = 8,
                 **neuron_options):
        super().__init__()
        size = pooled_size("tiny", input_size, 2)
        self.stem = Stem(in_channels, 32, timesteps, **neuron_options)
        self.features = nn.Sequential(Pool(2), ConvSpike(32, 64, **neuron_options), Pool(2))
        self.classifier = nn.Linear(64 * size * size, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(self.stem(x)).flatten(2))


def tiny(num_classes: int, timesteps: int, in_channels: int = 1, input_size: int = 8,
         **neuron_options) -> TinyCNN:
    return TinyCNN(num_classes, timesteps, in_channels, input_size, **neuron_options)
