"""Spiking layers: the fused :class:`TdBNPLIF` and its unfused pieces :class:`TdBN`, :class:`PLIF`."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mpdagl_triton import reference
from mpdagl_triton.ops import BACKENDS, fixed_width, tdbn_plif, validate
from mpdagl_triton.surrogates import SURROGATES, WIDTH_RULES, check_choice, kappas


def _logit(p: float) -> float:
    if not 0.0 < p < 1.0:
        raise ValueError(f"a learnable tau must lie strictly in (0, 1), got {p}")
    return math.log(p / (1.0 - p))


def _check_channels(x: Tensor, channels: int) -> None:
    if x.dim() >= 3 and x.shape[2] != channels:  # fewer dims: the op's validation names the shape
        raise ValueError(f"x has {x.shape[2]} channels (dim 2 of [T, B, C, *S]); this layer was built "
                         f"for {channels}")


class _NeuronOptions(nn.Module):
    """Decay (learnable via rho, or fixed) and the surrogate settings shared by PLIF and TdBNPLIF."""

    def __init__(self, vth: float = 0.5, tau: float = 0.2, learn_tau: bool = True,
                 surrogate: str = "rect", width_rule: str = "mpdagl", kappa0: float | None = None):
        super().__init__()
        check_choice("surrogate", surrogate, SURROGATES)
        check_choice("width_rule", width_rule, WIDTH_RULES)
        if not vth > 0:
            raise ValueError(f"vth must be positive, got {vth}")
        kappa0 = fixed_width(width_rule, kappa0)  # refuses a kappa0 that would do nothing
        self.vth, self.learn_tau, self.surrogate = float(vth), bool(learn_tau), surrogate
        self.width_rule, self.tau_init = width_rule, float(tau)
        self.kappa0 = kappa0 if width_rule == "fixed" else None
        if learn_tau:
            self.rho = nn.Parameter(torch.tensor(_logit(tau)))
        else:
            if not 0.0 <= tau <= 1.0:
                raise ValueError(f"tau must lie in [0, 1], got {tau}")
            self.register_parameter("rho", None)

    @property
    def tau(self) -> Tensor:
        """The decay as a 0-d tensor (with gradient when learnable)."""
        if self.learn_tau:
            return torch.sigmoid(self.rho)
        return torch.tensor(self.tau_init)

    def _rho_or_tau(self) -> Tensor | float:
        return self.rho if self.learn_tau else self.tau_init

    def neuron_extra_repr(self) -> str:
        decay = f"tau={float(self.tau.detach()):.4f}" + ("" if self.learn_tau else " (fixed)")
        return (f"vth={self.vth}, {decay}, surrogate={self.surrogate}, "
                f"width_rule={self.width_rule}" + (f", kappa0={self.kappa0}" if self.width_rule == "fixed" else ""))


class TdBNPLIF(_NeuronOptions):
    """tdBN -> PLIF fused: ``forward(x [T, B, C, *S], residual=None, skip=None) -> spikes`` of x's
    shape. ``residual`` enters before firing; ``skip`` is added to the spikes (a ResNet shortcut).

    Parameters ``gamma``, ``beta`` ``[C]`` and ``rho`` (tau = sigmoid(rho), when ``learn_tau``);
    buffers ``running_mean``, ``running_var``. Gives the same spikes and gradients as
    ``PLIF(TdBN(x), gamma)``.

    Example:
        >>> layer = TdBNPLIF(16)
        >>> layer(torch.randn(4, 8, 16, 5, 5)).shape
        torch.Size([4, 8, 16, 5, 5])
    """

    def __init__(self, channels: int, vth: float = 0.5, tau: float = 0.2, learn_tau: bool = True,
                 surrogate: str = "rect", width_rule: str = "mpdagl", alpha: float = 1.0,
                 kappa0: float | None = None, eps: float = 1e-5, momentum: float = 0.1,
                 backend: str = "auto"):
        super().__init__(vth, tau, learn_tau, surrogate, width_rule, kappa0)
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        check_choice("backend", backend, BACKENDS)
        self.channels, self.alpha, self.eps, self.momentum = channels, float(alpha), eps, momentum
        self.backend = backend
        # runtime switches, not part of the saved config: see SpikingNetwork.set_runtime_options
        self.sync_stats = False
        self.check_finite = False
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def kappas(self) -> tuple[Tensor, Tensor]:
        """Current ``(kappa_first, kappa_rest)`` of this layer."""
        return kappas(self.gamma, self._rho_or_tau(), self.vth, self.width_rule, self.kappa0)

    def forward(self, x: Tensor, residual: Tensor | None = None, skip: Tensor | None = None,
                timesteps: int | None = None) -> Tensor:
        """Spikes ``[T, B, C, *S]`` of ``x [T, B, C, *S]``; with ``timesteps``, x is one timestep
        ``[1, B, C, *S]`` that is the input at every step (``ops.tdbn_plif``)."""
        _check_channels(x, self.channels)
        return tdbn_plif(
            x, self.gamma, self.beta, self.rho, residual=residual, skip=skip,
            running_mean=self.running_mean, running_var=self.running_var, training=self.training,
            momentum=self.momentum, eps=self.eps, vth=self.vth, alpha=self.alpha,
            learn_tau=self.learn_tau, tau=None if self.learn_tau else self.tau_init,
            surrogate=self.surrogate, width_rule=self.width_rule, kappa0=self.kappa0,
            sync_stats=self.sync_stats, check_finite=self.check_finite, backend=self.backend,
            timesteps=timesteps,
        )

    def extra_repr(self) -> str:
        return f"{self.channels}, " + self.neuron_extra_repr()


class TdBN(nn.Module):
    """Threshold-dependent batch norm alone: ``forward(x [T, B, C, *S], residual=None) -> y``.

    ``y`` comes back in x's dtype (the fused op keeps it in float32; compare the two in float32
    or float64).

    Example:
        >>> y = TdBN(8)(torch.randn(4, 2, 8, 5, 5))   # [T, B, C, H, W]; training: batch statistics
        >>> y.shape, round(y.std().item(), 1)          # each channel to std alpha * vth = 0.5
        (torch.Size([4, 2, 8, 5, 5]), 0.5)
    """

    def __init__(self, channels: int, vth: float = 0.5, alpha: float = 1.0, eps: float = 1e-5,
                 momentum: float = 0.1):
        super().__init__()
        self.channels, self.vth, self.alpha, self.eps, self.momentum = channels, vth, alpha, eps, momentum
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        _check_channels(x, self.channels)
        validate(x, self.gamma, self.beta, None, residual=residual, running_mean=self.running_mean,
                 running_var=self.running_var, training=self.training, momentum=self.momentum,
                 eps=self.eps, vth=self.vth, alpha=self.alpha, learn_tau=False, tau=0.0,
                 surrogate="rect", width_rule="fixed", kappa0=1.0)
        y = reference.tdbn(
            x, self.gamma, self.beta, residual=residual, running_mean=self.running_mean,
            running_var=self.running_var, training=self.training, momentum=self.momentum,
            eps=self.eps, vth=self.vth, alpha=self.alpha,
        )
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.channels}, vth={self.vth}, alpha={self.alpha}"


class PLIF(_NeuronOptions):
    """PLIF neuron alone: ``forward(y [T, B, ...], gamma=None) -> spikes``.

    ``PLIF(vth=0.5, tau=0.2, learn_tau=True, surrogate="rect", width_rule="mpdagl", kappa0=None)``;
    ``kappa0`` is the width of ``width_rule="fixed"`` (1.0 when left out) and refused with another rule.

    ``gamma`` is the ``[C]`` scale of the tdBN feeding this neuron; the ``mpdagl`` width rule needs
    it (the other rules ignore it).

    Example:
        >>> spikes = PLIF(width_rule="fixed")(torch.full((3, 1, 2), 0.3))   # [T, B, ...]
        >>> spikes[:, 0, 0].tolist()   # V = 0.3, then 0.2 * 0.3 + 0.3 = 0.36, then 0.372: below 0.5
        [0.0, 0.0, 0.0]
        >>> PLIF(width_rule="fixed")(torch.full((2, 1, 1), 0.6)).flatten().tolist()  # fires, resets
        [1.0, 1.0]
    """

    def forward(self, y: Tensor, gamma: Tensor | None = None) -> Tensor:
        if y.dim() < 2 or y.shape[0] == 0:
            raise ValueError(f"y must have shape [T, B, ...] with T >= 1, got {list(y.shape)}")
        if gamma is None:
            if self.width_rule == "mpdagl":
                raise ValueError("the mpdagl width rule needs gamma, the scale of the feeding tdBN")
            gamma = torch.ones(1, device=y.device)
        dtype = reference.compute_dtype(y.dtype)
        k1, kr = kappas(gamma, self._rho_or_tau(), self.vth, self.width_rule, self.kappa0)
        if self.learn_tau:
            tau = torch.sigmoid(self.rho.to(dtype))
        else:  # built in the compute dtype: a float32 0.3 is not the float64 0.3
            tau = torch.full((), self.tau_init, dtype=dtype, device=y.device)
        spikes = reference.plif(y.to(dtype), tau, k1.to(dtype), kr.to(dtype), vth=self.vth,
                                surrogate=self.surrogate)
        return spikes.to(y.dtype)

    def extra_repr(self) -> str:
        return self.neuron_extra_repr()
