"""Surrogate-gradient shapes and surrogate-width rules (docs/method.md#surrogate-shapes, #width-rules).

Every shape integrates to 1 over u = V - Vth and has width ``kappa``; the width rules decide
``kappa`` per layer and per forward pass, with one value for the first timestep and one for the
rest. ``kappa`` never receives a gradient: it only shapes the backward pass.
"""

from __future__ import annotations

import math

import torch

SURROGATES: tuple[str, ...] = ("rect", "triangle", "sigmoid", "atan")
WIDTH_RULES: tuple[str, ...] = ("fixed", "lsg", "mpdagl")

#: |mean(gamma)| is floored here so that the mpdagl width never collapses to 0 (the authors' code
#: yields NaN at mean 0 and all-zero gradients below it).
GAMMA_FLOOR = 1e-3


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(choices)}")


def surrogate_derivative(u: torch.Tensor, kappa: torch.Tensor, surrogate: str) -> torch.Tensor:
    """h(u; kappa), the stand-in for dS/dV at u = V - Vth.

    Args:
        u: ``[...]`` membrane potential minus threshold.
        kappa: 0-d tensor (or broadcastable), the width.
        surrogate: one of :data:`SURROGATES`.

    Example:
        >>> surrogate_derivative(torch.tensor([0.0, 0.4, 0.6]), torch.tensor(1.0), "rect")
        tensor([1., 1., 0.])
    """
    check_choice("surrogate", surrogate, SURROGATES)
    if surrogate == "rect":
        return (u.abs() < kappa / 2).to(u.dtype) / kappa
    if surrogate == "triangle":
        return (2 / kappa) * torch.clamp(1 - 2 * u.abs() / kappa, min=0)
    if surrogate == "sigmoid":
        a = 4 / kappa
        s = torch.sigmoid(a * u)
        return a * s * (1 - s)
    a = 2 / kappa  # atan
    return (a / 2) / (1 + (math.pi * a * u / 2) ** 2)


def kappas(
    gamma: torch.Tensor,
    rho_or_tau: torch.Tensor | float,
    vth: float = 0.5,
    width_rule: str = "mpdagl",
    kappa0: float | None = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Surrogate widths ``(kappa_first, kappa_rest)`` of one layer, as 0-d tensors on gamma's device.

    Args:
        gamma: ``[C]`` tdBN scale of the layer feeding the neuron (used by ``mpdagl``).
        rho_or_tau: a tensor is the learnable ``rho`` (tau = sigmoid(rho)); a Python number is tau.
        vth: firing threshold.
        width_rule: ``fixed`` (kappa0), ``lsg`` (2 Vth sqrt(1+tau^2)) or ``mpdagl``
            (2 g Vth at t = 1, 2 sqrt(1+tau^2) g Vth after, g = max(|mean gamma|, 1e-3)).
        kappa0: the width of the ``fixed`` rule (the other rules do not read it).

    Nothing here synchronises with the host; gamma and rho are read without gradient.

    Example:
        >>> k1, kr = kappas(torch.ones(8), 0.2)
        >>> round(float(k1), 4), round(float(kr), 4)
        (1.0, 1.0198)
    """
    check_choice("width_rule", width_rule, WIDTH_RULES)
    gamma = gamma.detach()
    dtype = gamma.dtype if gamma.dtype == torch.float64 else torch.float32
    if width_rule == "fixed":
        k = torch.full((), float(kappa0), dtype=dtype, device=gamma.device)
        return k, k.clone()
    if isinstance(rho_or_tau, torch.Tensor):
        tau = torch.sigmoid(rho_or_tau.detach().to(device=gamma.device, dtype=dtype))
    else:
        tau = torch.full((), float(rho_or_tau), dtype=dtype, device=gamma.device)
    spread = torch.sqrt(1 + tau * tau)  # std ratio of V at t > 1 to t = 1 (Theorem 2)
    if width_rule == "lsg":
        k = 2 * vth * spread
        return k, k.clone()
    g = gamma.to(dtype).mean().abs().clamp(min=GAMMA_FLOOR)
    first = g * (2 * vth)  # one device op, not two
    return first, first * spread
