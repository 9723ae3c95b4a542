"""Readable PyTorch reference of tdBN -> PLIF with the adaptive surrogate (docs/method.md).

Plain loops over T and autograd through a surrogate :class:`torch.autograd.Function`. It is the test
oracle for the Triton kernels and the CPU path of :func:`mpdagl_triton.tdbn_plif`. Math runs in
float32 for half-precision inputs and in float64 for float64 inputs.
"""

from __future__ import annotations

import torch

from mpdagl_triton.surrogates import kappas, surrogate_derivative


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class SpikeFunction(torch.autograd.Function):
    """S = [u >= 0] with u = V - Vth forward; dS/dV = h(u; kappa) backward. kappa gets no gradient.

    V is kept for the backward, not u: the next step keeps V anyway (for its decay), and u is
    recomputed from it, bit for bit.
    """

    @staticmethod
    def forward(ctx, v: torch.Tensor, vth: float, kappa: torch.Tensor, surrogate: str) -> torch.Tensor:
        ctx.save_for_backward(v, kappa)
        ctx.vth, ctx.surrogate = vth, surrogate
        return (v - vth >= 0).to(v.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        v, kappa = ctx.saved_tensors
        return grad * surrogate_derivative(v - ctx.vth, kappa, ctx.surrogate), None, None, None


class Reset(torch.autograd.Function):
    """``w * (1 - S)``: the decayed potential, zeroed where the neuron fired (S is 0 or 1), with
    autograd's gradients of that product (the reset is not detached); S is kept as booleans, one
    byte an element, not the float ``1 - S`` autograd would keep."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(w, s.bool())
        return w * (1 - s)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        w, fired = ctx.saved_tensors
        return grad * (~fired).to(grad.dtype), -(grad * w)


class _AllReduceSum(torch.autograd.Function):
    """Sum over every process; its gradient is summed the same way (as in SyncBatchNorm)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        torch.distributed.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        torch.distributed.all_reduce(grad)
        return grad


def channel_dims(x: torch.Tensor) -> list[int]:
    """Every axis of ``[T, B, C, *S]`` except C."""
    return [0, 1] + list(range(3, x.dim()))


def per_channel(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape ``[C]`` so it broadcasts against ``[T, B, C, *S]``."""
    return v.reshape((1, 1, -1) + (1,) * (x.dim() - 3))


def tdbn(
    x: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    *,
    residual: torch.Tensor | None = None,
    running_mean: torch.Tensor | None = None,
    running_var: torch.Tensor | None = None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    vth: float = 0.5,
    alpha: float = 1.0,
    sync_stats: bool = False,
) -> torch.Tensor:
    """Threshold-dependent batch norm of ``x [T, B, C, *S]``; returns ``y`` in the compute dtype.

    ``y = gamma * alpha * Vth * (x - mu) / sqrt(var + eps) + beta (+ residual)`` with batch
    statistics over every axis but C in training (running stats updated in place when given),
    running statistics in eval. ``sync_stats``: statistics over every process's batch, through
    differentiable all-reduces (gradients then flow as in SyncBatchNorm).
    """
    dtype = compute_dtype(x.dtype)
    xc = x.to(dtype)
    if training:
        dims = channel_dims(x)
        n = x.numel() // x.shape[2]
        if sync_stats:
            n *= torch.distributed.get_world_size()
            mean = _AllReduceSum.apply(xc.sum(dim=dims)) / n
            var = _AllReduceSum.apply(((xc - per_channel(mean, x)) ** 2).sum(dim=dims)) / n
        else:
            mean = xc.mean(dim=dims)
            var = ((xc - per_channel(mean, x)) ** 2).mean(dim=dims)
        if running_mean is not None and running_var is not None:
            with torch.no_grad():
                running_mean.lerp_(mean.detach().to(running_mean.dtype), momentum)
                unbiased = var.detach() * (n / (n - 1))
                running_var.lerp_(unbiased.to(running_var.dtype), momentum)
    else:
        mean = running_mean.to(dtype)
        var = running_var.to(dtype)
    xhat = alpha * vth * (xc - per_channel(mean, x)) / torch.sqrt(per_channel(var, x) + eps)
    y = per_channel(gamma.to(dtype), x) * xhat + per_channel(beta.to(dtype), x)
    if residual is not None:
        y = y + residual.to(dtype)
    return y


def plif(
    y: torch.Tensor,
    tau: torch.Tensor,
    kappa_first: torch.Tensor,
    kappa_rest: torch.Tensor,
    *,
    vth: float = 0.5,
    surrogate: str = "rect",
) -> torch.Tensor:
    """Hard-reset LIF over the leading T axis of ``y``; returns spikes of y's shape and dtype.

    ``V_t = tau * V_{t-1} * (1 - S_{t-1}) + y_t``, ``S_t = [V_t >= Vth]``, V_0 = S_0 = 0. The reset
    is not detached. ``tau`` is a 0-d tensor (it may require grad), the kappas 0-d tensors.
    """
    # V_0 = S_0 = 0 as scalars: the first step's decay keeps nothing per element for the backward
    v = s = torch.zeros((), dtype=y.dtype, device=y.device)
    spikes = []
    for t in range(y.shape[0]):
        v = Reset.apply(tau * v, s) + y[t]
        s = SpikeFunction.apply(v, vth, kappa_first if t == 0 else kappa_rest, surrogate)
        spikes.append(s)
    return torch.stack(spikes)


def lif_inference(y: torch.Tensor, tau: torch.Tensor | float, vth: float, *, steps: int | None = None,
                  skip: torch.Tensor | None = None) -> torch.Tensor:
    """Forward-only hard-reset LIF: the spikes of :func:`plif`, bit for bit, with no autograd.

    ``y`` is the neuron input ``[T, B, ...]``, or one timestep ``[1, B, ...]`` that is the input at
    every one of ``steps`` steps (direct encoding). ``V_t = tau * V_{t-1} + y_t`` where no spike was
    fired at t-1 and ``y_t`` where one was (the hard reset to 0: the same rounding as
    ``tau * V * (1 - S) + y``), ``S_t = [V_t >= Vth]``. ``skip`` ``[T, B, ...]`` is added to the
    spikes. Nothing is saved for a backward pass; the loop over T unrolls under torch.export.

    Example:
        >>> lif_inference(torch.full((3, 1, 1), 0.3), 0.2, 0.5).flatten().tolist()
        [0.0, 0.0, 0.0]
        >>> lif_inference(torch.full((1, 1, 1), 0.6), 0.2, 0.5, steps=2).flatten().tolist()
        [1.0, 1.0]
    """
    steps = y.shape[0] if steps is None else steps
    spikes = []
    v = fired = None
    for t in range(steps):
        y_t = y[t] if y.shape[0] > 1 else y[0]
        v = y_t if v is None else torch.where(fired, y_t, tau * v + y_t)
        fired = v >= vth
        spikes.append(fired.to(y.dtype))
    out = torch.stack(spikes)
    return out if skip is None else out + skip.to(out.dtype)


def tdbn_plif(
    x: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    rho: torch.Tensor | None,
    *,
    residual: torch.Tensor | None = None,
    skip: torch.Tensor | None = None,
    running_mean: torch.Tensor | None = None,
    running_var: torch.Tensor | None = None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    vth: float = 0.5,
    alpha: float = 1.0,
    learn_tau: bool = True,
    tau: float | None = None,
    surrogate: str = "rect",
    width_rule: str = "mpdagl",
    kappa0: float = 1.0,
    sync_stats: bool = False,
) -> torch.Tensor:
    """Reference of :func:`mpdagl_triton.tdbn_plif` (same arguments, no validation, no backend)."""
    y = tdbn(
        x, gamma, beta, residual=residual, running_mean=running_mean, running_var=running_var,
        training=training, momentum=momentum, eps=eps, vth=vth, alpha=alpha, sync_stats=sync_stats,
    )
    if learn_tau:
        tau_t = torch.sigmoid(rho.to(y.dtype))
        k1, kr = kappas(gamma, rho, vth, width_rule, kappa0)
    else:
        tau_t = torch.full((), float(tau), dtype=y.dtype, device=y.device)
        k1, kr = kappas(gamma, tau, vth, width_rule, kappa0)
    spikes = plif(y, tau_t, k1.to(y.dtype), kr.to(y.dtype), vth=vth, surrogate=surrogate)
    if skip is not None:
        spikes = spikes + skip.to(spikes.dtype)
    return spikes.to(x.dtype)
