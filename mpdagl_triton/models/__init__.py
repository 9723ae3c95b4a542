"""Architectures built from mpdagl_triton layers (installed as ``mpdagl_triton.models``).

    >>> from mpdagl_triton import models
    >>> models.available()
    ['resnet18', 'resnet19', 'tiny', 'vgg13', 'vggsnn']
    >>> net = models.create("resnet19", num_classes=10, T=2, width_rule="mpdagl")
"""

from __future__ import annotations

from .blocks import init_weights
from .network import ARCHITECTURES, NEURON_OPTIONS, SpikingNetwork, load_state_strict


def available() -> list[str]:
    """Names accepted by :func:`create`."""
    return sorted(ARCHITECTURES)


def create(name: str, num_classes: int, T: int, *, in_channels: int = 3, input_size: int = 32,
           label_names: list[str] | None = None, normalization: dict | None = None,
           dataset: str | None = None, **neuron_options) -> SpikingNetwork:
    """Build architecture ``name``; ``neuron_options`` go to every TdBNPLIF (surrogate, width_rule,
    learn_tau, tau, vth, alpha, kappa0, backend)."""
    return SpikingNetwork(name, num_classes, T, in_channels=in_channels, input_size=input_size,
                          neuron=neuron_options, label_names=label_names, normalization=normalization,
                          dataset=dataset)


__all__ = ["ARCHITECTURES", "NEURON_OPTIONS", "SpikingNetwork", "available", "create", "init_weights",
           "load_state_strict"]
