"""Spiking layers: the fused :class:`TdBNPLIF` and its unfused pieces :class:`TdBN`, :class:`PLIF`."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mpdagl_triton import reference
from mpdagl_triton.ops import BACKENDS, fixed_width, resolve_backend, tdbn_plif, validate
from mpdagl_triton.surrogates import SURROGATES, WIDTH_RULES, check_choice, kappas


#: how an eval-mode layer runs under ``torch.no_grad()`` on the reference backend: ``"fold"``
#: (tdBN folded into the preceding convolution or linear layer, then a forward-only LIF),
#: ``"affine"`` (per-channel scale and shift, then the forward-only LIF) or ``"op"`` (the fused op's
#: eval route, as with gradients). The benchmark (``bench/inference.py``) sets it to compare them.
INFERENCE_PATH = "fold"


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
        if self.inference(x):  # per-channel scale and shift, then the forward-only LIF
            scale, shift = self.affine(reference.compute_dtype(x.dtype))
            y = reference.per_channel(scale, x) * x + reference.per_channel(shift, x)
            if residual is not None:
                y = y + residual.to(y.dtype)
            return self.fire(y, skip, timesteps).to(x.dtype)
        return tdbn_plif(
            x, self.gamma, self.beta, self.rho, residual=residual, skip=skip,
            running_mean=self.running_mean, running_var=self.running_var, training=self.training,
            momentum=self.momentum, eps=self.eps, vth=self.vth, alpha=self.alpha,
            learn_tau=self.learn_tau, tau=None if self.learn_tau else self.tau_init,
            surrogate=self.surrogate, width_rule=self.width_rule, kappa0=self.kappa0,
            sync_stats=self.sync_stats, check_finite=self.check_finite, backend=self.backend,
            timesteps=timesteps,
        )

    # -- inference: eval mode, no gradients --------------------------------------------------

    def inference(self, x: Tensor) -> bool:
        """Whether a call on ``x`` takes the inference path: eval mode, gradients off
        (``torch.no_grad()`` / ``torch.inference_mode()``), the reference backend, and
        :data:`INFERENCE_PATH` not ``"op"``. The Triton backend's eval route already reads the
        running statistics in one forward kernel and, without gradients, saves nothing.

        Example:
            >>> layer, x = TdBNPLIF(2).eval(), torch.zeros(2, 1, 2)
            >>> layer.inference(x), torch.no_grad()(layer.inference)(x)
            (False, True)
        """
        return (not self.training and not torch.is_grad_enabled() and INFERENCE_PATH != "op"
                and resolve_backend(self.backend, x.device) == "torch")

    def affine(self, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """The eval-mode tdBN as ``y = scale * x + shift``: ``scale = gamma * alpha * Vth /
        sqrt(running_var + eps)``, ``shift = beta - scale * running_mean``, each ``[C]``, worked out
        in float64 and returned in ``dtype``.

        Example:
            >>> scale, shift = TdBNPLIF(3).affine()
            >>> [round(v, 4) for v in scale.tolist()], shift.tolist()   # alpha * Vth / sqrt(1 + eps)
            ([0.5, 0.5, 0.5], [0.0, 0.0, 0.0])
        """
        with torch.no_grad():
            scale = (self.gamma.double() * (self.alpha * self.vth)
                     / torch.sqrt(self.running_var.double() + self.eps))
            shift = self.beta.double() - scale * self.running_mean.double()
        return scale.to(dtype), shift.to(dtype)

    def fold(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        """The preceding convolution's or linear layer's ``weight`` ``[C, ...]`` (no bias) with this
        eval-mode tdBN folded in: ``(weight * scale, shift)`` in the weight's dtype, so that
        ``conv(x, *fold(conv.weight))`` is the tdBN of ``conv(x)``.

        Example:
            >>> w, b = TdBNPLIF(4).fold(torch.ones(4, 2, 3, 3))
            >>> w.shape, b.shape
            (torch.Size([4, 2, 3, 3]), torch.Size([4]))
        """
        key = self._fold_key(weight)
        cached = getattr(self, "_folded", None)
        if key is not None and cached is not None and cached[0] == key:
            return cached[1]
        scale, shift = self.affine(torch.float64)
        with torch.no_grad():
            folded = weight.double() * scale.reshape(-1, *([1] * (weight.dim() - 1)))
        result = folded.to(weight.dtype), shift.to(weight.dtype)
        if key is not None:  # kept until a tensor it came from changes (each forward would refold)
            self._folded = (key, result)
        return result

    def _fold_key(self, weight: Tensor) -> tuple | None:
        """What a fold of ``weight`` depends on: the tensors' identities and version counters (any
        in-place change, an optimizer step or ``load_state_dict``, bumps them) and the options.
        None where nothing may be cached: while torch.compile or torch.export traces, or for
        inference tensors, which have no version counter."""
        if torch.compiler.is_compiling():
            return None
        tensors = [weight, self.gamma, self.beta, self.running_mean, self.running_var]
        if self.learn_tau:
            tensors.append(self.rho)
        try:
            versions = tuple((id(t), t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)
        except RuntimeError:
            return None
        return versions + (self.alpha, self.vth, self.eps)

    def decay(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """tau as the 0-d tensor the reference multiplies by: ``sigmoid(rho)`` worked out in
        ``dtype`` (or the fixed tau in ``dtype``).

        Example:
            >>> round(float(TdBNPLIF(1, tau=0.2).decay()), 6)
            0.2
        """
        if self.learn_tau:
            return torch.sigmoid(self.rho.detach().to(dtype))
        return torch.full((), self.tau_init, dtype=dtype, device=self.gamma.device)

    def fire(self, y: Tensor, skip: Tensor | None = None, timesteps: int | None = None) -> Tensor:
        """Forward-only LIF on the normalized input ``y`` ``[T, B, C, *S]`` (or one timestep with
        ``timesteps``): spikes in y's dtype, plus ``skip`` (:func:`reference.lif_inference`).

        Example:
            >>> TdBNPLIF(1).fire(torch.full((2, 1, 1), 0.6)).flatten().tolist()   # V >= 0.5: fires, resets
            [1.0, 1.0]
        """
        dtype = reference.compute_dtype(y.dtype)
        spikes = reference.lif_inference(y.to(dtype), self.decay(dtype), self.vth, steps=timesteps, skip=skip)
        return spikes.to(y.dtype)

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
