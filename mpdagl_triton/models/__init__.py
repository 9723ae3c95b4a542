"""The model zoo, and the building blocks and registry for networks of your own.

Zoo: :func:`create`, :func:`available`, :class:`SpikingNetwork`. Your own network: build a body
from :class:`Stem` (direct encoding), :class:`ConvSpike` (conv -> tdBN -> PLIF),
:class:`BasicBlock` (the residual block of our ResNets), :class:`Pool`, :class:`SpikingLinear`,
:func:`fold` / :func:`unfold` (time into the batch and back), then :func:`register` it
(docs/custom-models.md).

    >>> from mpdagl_triton import models
    >>> [name for name in models.available() if name in models.ZOO]
    ['resnet18', 'resnet19', 'tiny', 'vgg13', 'vggsnn']
    >>> net = models.create("resnet19", num_classes=10, T=2, width_rule="mpdagl")
"""

from __future__ import annotations

from .blocks import ConvSpike, Pool, SpikingLinear, Stem, fold, init_weights, unfold
from .network import (ARCHITECTURES, NEURON_OPTIONS, ZOO, SpikingNetwork, load_state_strict, register,
                      unknown_architecture)
from .resnet import BasicBlock


def available() -> list[str]:
    """Names accepted by :func:`create`: the zoo and the architectures registered so far."""
    return sorted(ARCHITECTURES)


def create(name: str, num_classes: int, T: int, *, in_channels: int = 3, input_size: int = 32,
           label_names: list[str] | None = None, normalization: dict | None = None,
           dataset: str | None = None, **neuron_options) -> SpikingNetwork:
    """Build architecture ``name``; ``neuron_options`` go to every TdBNPLIF (surrogate, width_rule,
    learn_tau, tau, vth, alpha, kappa0, backend)."""
    return SpikingNetwork(name, num_classes, T, in_channels=in_channels, input_size=input_size,
                          neuron=neuron_options, label_names=label_names, normalization=normalization,
                          dataset=dataset)


__all__ = ["ARCHITECTURES", "BasicBlock", "ConvSpike", "NEURON_OPTIONS", "Pool", "SpikingLinear",
           "SpikingNetwork", "Stem", "ZOO", "available", "create", "fold", "init_weights", "load_state_strict",
           "register", "unfold", "unknown_architecture"]
