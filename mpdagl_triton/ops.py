"""The public fused op: validation, the ``torch.library`` registration, and which route a call takes.

This is the one place where ops are registered and routes chosen. :data:`ROUTES` is the dispatch
table (docs/design.md shows the same table; a test keeps them equal); :func:`route` picks a row
for a call. The backend comes first: ``backend="torch"`` (what ``"auto"`` means off CUDA) runs
:mod:`mpdagl_triton.reference`, ``backend="triton"`` the kernels of
:mod:`mpdagl_triton.kernels.tdbn_plif`, through one of three routes.

Switches: ``MPDAGL_BACKEND`` (what ``backend="auto"`` means) and Triton's own ``TRITON_INTERPRET=1``
(run the kernels through Triton's CPU interpreter, for debugging and the CPU test suite; set it
before triton is imported). :data:`INDUCTOR_ROUTE` lets the benchmarks compare the compiled routes.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import warnings
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from mpdagl_triton import reference
from mpdagl_triton.errors import InvalidInput
from mpdagl_triton.surrogates import GAMMA_FLOOR, SURROGATES, WIDTH_RULES, check_choice

BACKENDS: tuple[str, ...] = ("auto", "triton", "torch")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

try:  # triton is a Linux-only dependency; the reference path works without it
    from mpdagl_triton.kernels import tdbn_plif as _kernels
except ImportError as exc:  # pragma: no cover - exercised only where triton is missing
    _kernels = None
    _KERNEL_IMPORT_ERROR: Exception | None = exc
else:
    _KERNEL_IMPORT_ERROR = None


def triton_interpreting() -> bool:
    """Whether Triton runs kernels through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def resolve_backend(backend: str, device: torch.device) -> str:
    """``"triton"`` or ``"torch"`` for a tensor on ``device``; raises if an explicit choice can't run.

    ``"auto"`` defers to ``$MPDAGL_BACKEND`` when set, then picks Triton on CUDA and the reference
    elsewhere. It never falls back silently from an explicit ``"triton"``.

    Example:
        >>> resolve_backend("torch", torch.device("cpu"))
        'torch'
    """
    if backend == "auto":
        env = os.environ.get("MPDAGL_BACKEND", "auto")
        if env not in BACKENDS:
            raise ValueError(f"unknown MPDAGL_BACKEND {env!r}; expected one of {', '.join(BACKENDS)}")
        backend = env
    check_choice("backend", backend, BACKENDS)
    if backend == "auto":
        return "triton" if device.type == "cuda" and _kernels is not None else "torch"
    if backend == "triton":
        if _kernels is None:
            raise RuntimeError(f"backend='triton' needs the triton package: {_KERNEL_IMPORT_ERROR}")
        if device.type == "cuda":
            return "triton"
        if device.type == "cpu" and triton_interpreting():
            if _INTERPRETER_PROBLEM:
                raise RuntimeError(_INTERPRETER_PROBLEM)
            return "triton"
        raise RuntimeError(
            f"backend='triton' cannot run on a {device.type} tensor: it needs a CUDA device, or "
            "TRITON_INTERPRET=1 set before triton is imported to interpret kernels on the CPU. "
            "Use backend='torch' (or 'auto') for the PyTorch reference."
        )
    return backend


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


def interpreter_incompatibility(triton_version: str, numpy_version: str) -> str | None:
    """Why Triton's CPU interpreter cannot run our kernels with these versions, or None.

    Before Triton 3.7 the interpreter turns a loop bound (our ``row_iters``) into a Python int
    with ``int()`` of a 1-element array, which NumPy 2.4 made a TypeError; every statistics and
    backward kernel would then fail deep inside the interpreter.
    """
    if _release(triton_version) < (3, 7) and _release(numpy_version) >= (2, 4):
        return (f"Triton {triton_version}'s CPU interpreter (TRITON_INTERPRET=1) cannot run the kernels "
                f"with NumPy {numpy_version}: before Triton 3.7 it reads loop bounds with int() of a "
                "1-element array, which NumPy 2.4 refuses. Install triton>=3.7 or numpy<2.4, or use "
                "backend='torch' (or 'auto') for the PyTorch reference.")
    return None


if _kernels is not None:  # once, here: resolve_backend is traced by dynamo under torch.compile
    import numpy
    import triton

    _INTERPRETER_PROBLEM = interpreter_incompatibility(triton.__version__, numpy.__version__)
else:
    _INTERPRETER_PROBLEM = None


# ----------------------------------------------------------------------------------------------
# The dispatch table
# ----------------------------------------------------------------------------------------------


class Route(NamedTuple):
    """One way a call of :func:`tdbn_plif` is carried out."""

    name: str
    backend: str  # what resolve_backend gave
    when: str  # the condition, for people
    runs: str  # what carries the call out


ROUTES: tuple[Route, ...] = (
    Route("reference", "torch", "any call",
          "`reference.tdbn_plif`: PyTorch ops, autograd through a surrogate `autograd.Function`"),
    Route("eager", "triton", "not under torch.compile",
          "`_EagerTdBNPLIF` (`torch.autograd.Function`) launching the kernels directly; the "
          "statistics kernel also updates the running statistics"),
    Route("inductor", "triton", "under torch.compile, x on CUDA, statistics of this process only",
          "`mpdagl::tdbn_plif_fwd_inductor` / `_bwd_inductor` (`torch.library.triton_op`): inductor "
          "traces the bodies and launches the kernels from its generated code"),
    Route("opaque", "triton", "under torch.compile otherwise (`sync_stats` over processes, Triton's "
          "CPU interpreter)",
          "`mpdagl::tdbn_plif_fwd` / `_bwd` (`torch.library.custom_op`), opaque to inductor; the "
          "batch statistics are merged between the kernels"),
)
_ROUTES = {r.name: r for r in ROUTES}

#: under torch.compile on CUDA, take the inductor route where it applies; the benchmarks set it
#: False to measure the opaque route in its place
INDUCTOR_ROUTE = True


def route(backend: str, x: Tensor, sync: bool, compiling: bool) -> Route:
    """The row of :data:`ROUTES` a call takes: ``backend`` as :func:`resolve_backend` gave it,
    ``sync`` whether batch statistics are merged over processes, ``compiling`` whether
    torch.compile is tracing.

    Example:
        >>> route("triton", torch.empty(2, 1, 3), sync=False, compiling=False).name
        'eager'
        >>> route("triton", torch.empty(2, 1, 3), sync=True, compiling=True).name
        'opaque'
    """
    if backend == "torch":
        return _ROUTES["reference"]
    if not compiling:
        return _ROUTES["eager"]
    if INDUCTOR_ROUTE and x.is_cuda and not sync and _fwd_inductor_op is not None:
        return _ROUTES["inductor"]
    return _ROUTES["opaque"]


def dispatch_table() -> str:
    """:data:`ROUTES` as the markdown table docs/design.md shows."""
    rows = ["| route | backend | when | what runs |", "|---|---|---|---|"]
    rows += [f"| {r.name} | {r.backend} | {r.when} | {r.runs} |" for r in ROUTES]
    return "\n".join(rows)


# ----------------------------------------------------------------------------------------------
# Synchronized batch statistics (several processes, one batch)
# ----------------------------------------------------------------------------------------------


def world_size() -> int:
    """Processes in the default group (1 when torch.distributed is not in use)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _merge_stats(mean: Tensor, var: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased var over every process's batch (Chan's merge; no host sync)."""
    import torch.distributed as dist

    local = torch.stack([torch.full_like(mean, count), mean, var * count])  # n, mean, M2
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local)
    n, means, m2 = torch.stack(parts).unbind(1)  # each [world, C]
    total = n.sum(0)
    merged_mean = (n * means).sum(0) / total
    merged_m2 = (m2 + n * (means - merged_mean) ** 2).sum(0)
    return merged_mean, merged_m2 / total


def _global_dy_sums(sums: Tensor, count: int) -> tuple[Tensor, int]:
    """(means, 1): the [2, C] means of dy and dy * xhat over every process's batch, in the
    (sums, count) form the dx pass divides (no host sync)."""
    import torch.distributed as dist

    totals = torch.cat([sums[:2], torch.full_like(sums[:1], count)])
    dist.all_reduce(totals)
    return totals[:2] / totals[2:], 1


# ----------------------------------------------------------------------------------------------
# Custom ops
# ----------------------------------------------------------------------------------------------


def _dense(t: Tensor) -> bool:
    """Whether ``t`` covers its memory exactly once, in some dim order."""
    expected = 1
    for stride, size in sorted((st, n) for n, st in zip(t.shape, t.stride()) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _broadcast_of_dense(x: Tensor) -> bool:
    return x.shape[0] > 1 and x.stride(0) == 0 and _dense(x[0])


def _unbroadcast_strides(x: Tensor) -> tuple[int, ...]:
    """The strides of x's broadcast over T (stride 0) given real T slices."""
    return (x[0].numel(),) + x[0].stride()


def _output_like(x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """A new ``[T, B, C, *S]`` tensor in x's layout; a broadcast over T (stride 0) gets real T slices."""
    if _broadcast_of_dense(x):
        return torch.empty_strided(x.shape, _unbroadcast_strides(x), dtype=dtype or x.dtype,
                                   device=x.device)
    return torch.empty_like(x, dtype=dtype)


def _in_layout_of(like: Tensor, t: Tensor) -> Tensor:
    """``t`` (same shape as ``like``) with like's strides; copies only when they differ."""
    if t.stride() == like.stride():
        return t
    return torch.empty_like(like, dtype=t.dtype).copy_(t)


def _with_strides(t: Tensor, strides: tuple[int, ...]) -> Tensor:
    """``t`` with ``strides``; copies only when they differ."""
    if t.stride() == strides:
        return t
    return torch.empty_strided(t.shape, strides, dtype=t.dtype, device=t.device).copy_(t)


def _tile_layout(x: Tensor, out: Tensor):
    """The kernels' layout when x and out agree after T (x's T stride may differ), else None."""
    if out.stride()[1:] != x.stride()[1:]:
        return None
    return _kernels.Layout.of(x)


def _forward_impl(x: Tensor, gamma: Tensor, beta: Tensor, rho: Optional[Tensor],
                  residual: Optional[Tensor], skip: Optional[Tensor],
                  running_mean: Optional[Tensor], running_var: Optional[Tensor], training: bool,
                  tau: float, eps: float, vth: float, alpha: float,
                  surrogate: str, width_rule: str, kappa0: float, sync: bool, timesteps: int,
                  wrap=None, momentum: float | None = None,
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The forward op (``mpdagl::tdbn_plif_fwd``, below).

    ``wrap(kernel)`` is what gets launched: ``torch.library.wrap_triton`` in the triton_ops.
    ``momentum`` (eager calls only; the op itself never writes its inputs): in training, also
    update ``running_mean`` and ``running_var`` in place, inside the statistics kernel."""
    x = _at_every_step(x, timesteps)
    spikes = _output_like(x)
    work, work_out = x, spikes
    layout = _tile_layout(x, spikes)
    if layout is None:  # a layout the tiles can't walk: compute on a contiguous copy
        work = x.contiguous()
        work_out = torch.empty_like(work)
        layout = _kernels.Layout.of(work)
    if residual is not None:
        residual = _in_layout_of(work_out, residual)
    if skip is not None:
        skip = _in_layout_of(work_out, skip)
    if training:
        sync = sync and world_size() > 1
        update = momentum is not None and running_mean is not None
        in_kernel = (running_mean, running_var, momentum) if update and not sync else None
        mean, var = _kernels.batch_stats(work, layout, wrap, in_kernel)
        if sync:
            count = x.numel() // x.shape[2]
            mean, var = _merge_stats(mean, var, count)
            if update:  # ranks hold equal batches
                _update_running_stats(running_mean, running_var, mean, var, count * world_size(),
                                      momentum)
    else:
        cdtype = _kernels.compute_dtype(x.dtype)
        mean = running_mean.to(dtype=cdtype, copy=True)
        var = running_var.to(dtype=cdtype, copy=True)
    widths = _kernels.Widths(width_rule, kappa0, GAMMA_FLOOR)
    kappas = _kernels.forward(work, layout, work_out, gamma, beta, rho, tau, residual, mean, var,
                              eps, vth, alpha, widths, skip, wrap)
    if work_out is not spikes:
        spikes.copy_(work_out)
    return spikes, mean, var, kappas


def _at_every_step(x: Tensor, timesteps: int) -> Tensor:
    """x, or its one timestep ``[1, B, C, *S]`` broadcast over ``timesteps`` (a view of a dense
    tensor)."""
    if timesteps == x.shape[0]:
        return x
    return (x if _dense(x) else x.contiguous()).expand(timesteps, *x.shape[1:])


def _one_step(x: Tensor) -> Tensor:
    """x ``[1, B, C, *S]`` in a layout the tiles walk in place (else a contiguous copy): the
    backward's one timestep, whose dx the kernels write directly."""
    return x if _dense(x) and _kernels.Layout.of(x) is not None else x.contiguous()


def _tdbn_plif_fwd(
    x: Tensor,
    gamma: Tensor,
    beta: Tensor,
    rho: Optional[Tensor],
    residual: Optional[Tensor],
    skip: Optional[Tensor],
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    training: bool,
    tau: float,
    eps: float,
    vth: float,
    alpha: float,
    surrogate: str,
    width_rule: str,
    kappa0: float,
    sync: bool,
    timesteps: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Spikes (plus skip), the per-channel mean and biased var used (batch stats in training,
    else the running ones, which are only read) and the surrogate widths ``[2]`` (kappa_first,
    kappa_rest) for the backward pass. The decay is sigmoid(rho), or ``tau`` when rho is None.
    With ``sync`` the batch statistics are merged over every process of the default group.
    ``timesteps`` is x's T, or x is one timestep ``[1, B, C, *S]``, the input at every step."""
    return _forward_impl(x, gamma, beta, rho, residual, skip, running_mean, running_var, training,
                         tau, eps, vth, alpha, surrogate, width_rule, kappa0, sync, timesteps)


_fwd_op = torch.library.custom_op("mpdagl::tdbn_plif_fwd", _tdbn_plif_fwd, mutates_args=())


@_fwd_op.register_fake
def _fwd_fake(x, gamma, beta, rho, residual, skip, running_mean, running_var, training, tau, eps,
              vth, alpha, surrogate, width_rule, kappa0, sync, timesteps):
    cdtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    stats = x.new_empty(x.shape[2], dtype=cdtype)
    return (_output_like(_at_every_step(x, timesteps)), stats, torch.empty_like(stats),
            x.new_empty(2, dtype=cdtype))


def _backward_impl(grad: Tensor, x: Tensor, gamma: Tensor, beta: Tensor, rho: Optional[Tensor],
                   residual: Optional[Tensor], mean: Tensor, var: Tensor, kappas: Tensor,
                   tau: float, eps: float, vth: float, alpha: float, surrogate: str,
                   batch_stats: bool, sync: bool,
                   wrap=None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx, dgamma, dbeta, drho, dresidual); drho and dresidual are empty without rho, residual.
    An x of one timestep given at every step (the forward's ``timesteps``) gets dx summed over T."""
    summed = x.shape[0] != grad.shape[0]
    if summed:  # the kernels read the one timestep in place and add dx up over T in registers
        step = _one_step(x)
        x, dx = step.expand(grad.shape[0], *step.shape[1:]), torch.empty_like(step)
    elif _broadcast_of_dense(x) and grad.stride() == _unbroadcast_strides(x):
        # not the forward's allocation for the spikes (same call, same arguments): AOTAutograd
        # would merge the two and keep that buffer for the backward, and inductor would copy it
        # before each kernel writes it
        dx = torch.empty_like(grad)
    else:
        dx = _output_like(x)
    dres = None if residual is None else _output_like(x, residual.dtype)
    work, work_dx, work_dres = x, dx, dres
    layout = _tile_layout(x, dx)
    if layout is None:  # a layout the tiles can't walk (never a summed one): contiguous copies
        work = x.contiguous()
        work_dx = torch.empty_like(work)
        work_dres = None if dres is None else torch.empty_like(work, dtype=dres.dtype)
        layout = _kernels.Layout.of(work)
    if summed:  # grad and residual: T real slices in x's layout
        grad = _with_strides(grad, _unbroadcast_strides(x))
        residual = None if residual is None else _with_strides(residual, grad.stride())
    else:
        grad = _in_layout_of(work_dx, grad)
        residual = None if residual is None else _in_layout_of(work_dx, residual)
    dgamma, dbeta, drho = _kernels.backward(
        grad, work, layout, work_dx, work_dres, gamma, beta, rho, tau, residual, mean, var, kappas,
        eps, vth, alpha, surrogate, batch_stats,
        _global_dy_sums if sync and batch_stats and world_size() > 1 else None, wrap)
    if work_dx is not dx:
        dx.copy_(work_dx)
        if dres is not None:
            dres.copy_(work_dres)
    return (dx, dgamma, dbeta, x.new_empty(0) if drho is None else drho,
            x.new_empty(0) if dres is None else dres)


# Change this op's schema only together with the forward op's: AOTAutograd caches a compiled
# backward graph under the forward graph's key, and would replay calls with the old schema.
def _tdbn_plif_bwd(
    grad: Tensor,
    x: Tensor,
    gamma: Tensor,
    beta: Tensor,
    rho: Optional[Tensor],
    residual: Optional[Tensor],
    mean: Tensor,
    var: Tensor,
    kappas: Tensor,
    tau: float,
    eps: float,
    vth: float,
    alpha: float,
    surrogate: str,
    batch_stats: bool,
    sync: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx, dgamma, dbeta, drho, dresidual); drho and dresidual are empty without rho, residual."""
    return _backward_impl(grad, x, gamma, beta, rho, residual, mean, var, kappas, tau, eps, vth,
                          alpha, surrogate, batch_stats, sync)


_bwd_op = torch.library.custom_op("mpdagl::tdbn_plif_bwd", _tdbn_plif_bwd, mutates_args=())


@_bwd_op.register_fake
def _bwd_fake(grad, x, gamma, beta, rho, residual, mean, var, kappas, tau, eps, vth, alpha,
              surrogate, batch_stats, sync):
    summed = x.shape[0] != grad.shape[0]  # x of one timestep: dx is its total over T
    dx = torch.empty_like(_one_step(x)) if summed else None
    x = _at_every_step(x, grad.shape[0])
    return (dx if summed else _output_like(x), torch.empty_like(gamma),
            torch.empty_like(beta), x.new_empty(0) if rho is None else torch.empty_like(rho),
            x.new_empty(0) if residual is None else _output_like(x, residual.dtype))


def _save(ctx, inputs: tuple, mean: Tensor, var: Tensor, kappas: Tensor) -> None:
    (x, gamma, beta, rho, residual, skip, _running_mean, _running_var, training, tau, eps, vth,
     alpha, surrogate, _width_rule, _kappa0, sync, _timesteps) = inputs
    ctx.save_for_backward(x, gamma, beta, rho, residual, mean, var, kappas)
    ctx.hyper = (tau, eps, vth, alpha, surrogate, training, sync)
    ctx.has_skip = skip is not None


def _grads(ctx, grad_spikes, backward) -> tuple:
    """The gradients of (x, gamma, beta, rho, residual, skip)."""
    x, gamma, beta, rho, residual, mean, var, kappas = ctx.saved_tensors
    dx, dgamma, dbeta, drho, dres = backward(grad_spikes, x, gamma, beta, rho, residual, mean, var,
                                             kappas, *ctx.hyper)
    # the skip is added after firing: its gradient is the incoming one, unchanged
    return (dx, dgamma, dbeta, drho if rho is not None else None,
            dres if residual is not None else None, grad_spikes if ctx.has_skip else None)


def _fwd_setup_context(ctx, inputs, output):
    _save(ctx, inputs, *output[1:])
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)  # the unused grads of mean, var, kappas stay None, not zeros


def _fwd_backward(ctx, grad_spikes, _grad_mean, _grad_var, _grad_kappas):
    return *_grads(ctx, grad_spikes, _bwd_op), *(None,) * 12


_fwd_op.register_autograd(_fwd_backward, setup_context=_fwd_setup_context)


class _EagerTdBNPLIF(torch.autograd.Function):
    """The custom ops' implementation as a plain autograd Function, for eager mode.

    The dispatcher route of ``torch.library`` ops costs a few hundred microseconds of host time
    per layer and step; outside torch.compile this calls the same implementations directly, with
    few arguments (autograd walks each one) and one output, the spikes; the statistics kernel
    updates the running statistics itself (``momentum``; None: not at all). Under torch.compile
    the registered ops are used (:func:`route`)."""

    @staticmethod
    def forward(ctx, x, gamma, beta, rho, residual, skip, options: tuple, momentum):
        # options: the forward op's arguments after skip, running_mean first
        inputs = (x, gamma, beta, rho, residual, skip, *options)
        spikes, mean, var, kappas = _forward_impl(*inputs, momentum=momentum)
        _save(ctx, inputs, mean, var, kappas)
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):
        return *_grads(ctx, grad_spikes, _backward_impl), None, None


def _dense_for_inductor(x: Tensor) -> Tensor:
    """x when it is dense or a broadcast over T of a dense tensor, else a dense copy in x's layout
    (a slice, say).

    The strides a traced body reads are baked into the launches, and inductor guarantees a
    kernel argument only its traced stride order; a dense tensor in that order has exactly the
    traced strides (the other tensors the kernels walk are dense: allocated by the body, or
    copied into the layout of one that is). A broadcast reaches the kernels as its dense first
    timestep (``kernels.tdbn_plif._memory``), its zero T stride as a number."""
    return x if _dense(x) or _broadcast_of_dense(x) else _output_like(x).copy_(x)


_fwd_inductor_op = _bwd_inductor_op = None


def register_inductor_ops() -> None:
    """Register the custom ops whose bodies inductor traces (the module docstring), once.

    Done at import where a CUDA device is present. Without one nothing calls them (their route
    needs CUDA tensors) and registering would import dynamo and inductor (~1 s of every CPU
    run's start); tools that trace them for a GPU on a machine without one call this first."""
    global _fwd_inductor_op, _bwd_inductor_op
    if _fwd_inductor_op is not None:
        return
    if _kernels is None or triton_interpreting():
        raise RuntimeError("inductor cannot trace our kernels without triton, or through Triton's "
                           "CPU interpreter (TRITON_INTERPRET=1), which runs them as Python")
    from torch.library import triton_op, wrap_triton

    # The custom ops above with bodies inductor can trace (no synchronized statistics); wraps()
    # gives them those ops' signatures, from which triton_op infers the same schemas.
    @triton_op("mpdagl::tdbn_plif_fwd_inductor", mutates_args=())
    @functools.wraps(_tdbn_plif_fwd)
    def fwd_op(x, *args):
        *args, _sync, timesteps = args
        return _forward_impl(_dense_for_inductor(x), *args, False, timesteps, wrap_triton)

    @triton_op("mpdagl::tdbn_plif_bwd_inductor", mutates_args=())
    @functools.wraps(_tdbn_plif_bwd)
    def bwd_op(grad, x, *args):
        return _backward_impl(grad, _dense_for_inductor(x), *args[:-1], False, wrap_triton)

    def fwd_backward(ctx, grad_spikes, _grad_mean, _grad_var, _grad_kappas):
        return *_grads(ctx, grad_spikes, bwd_op), *(None,) * 12

    fwd_op.register_autograd(fwd_backward, setup_context=_fwd_setup_context)
    _fwd_inductor_op, _bwd_inductor_op = fwd_op, bwd_op


# Registered wherever inductor can trace the kernels, whatever the hardware: the same ops exist
# on every machine. Triton's CPU interpreter runs kernels as Python, which inductor cannot trace.
if _kernels is not None and not triton_interpreting():
    register_inductor_ops()


#: how inductor's compile workers learn that our kernels use its static launcher (``compile_options``)
STATIC_LAUNCH_ENV = "TORCHINDUCTOR_STATIC_LAUNCH_USER_DEFINED_TRITON_KERNELS"


def compile_options(mode: str = "default", *, static_launch: bool = True) -> dict:
    """torch.compile's inductor options for ``mode``, plus launching our kernels through
    inductor's static CUDA launcher, as inductor launches its own (torch leaves user-defined
    Triton kernels on Triton's launcher by default: 16 us per launch against a few on an H200
    host, and a layer's forward + backward launches six of ours). Pass as
    ``torch.compile(model, options=compile_options(mode))``; ``mode`` as torch.compile's.

    Inductor compiles kernels in worker processes, where each kernel's launcher is chosen, and
    torch passes them ``use_static_triton_launcher`` but not this option (torch 2.11-2.13:
    ``async_compile.py``). So this also sets
    ``TORCHINDUCTOR_STATIC_LAUNCH_USER_DEFINED_TRITON_KERNELS=1``, which workers read when they
    start (it then holds for every user-defined Triton kernel they compile). Call it before the
    process's first torch.compile: workers already running keep Triton's launcher (it warns).

    Example:
        >>> from mpdagl_triton.models import create
        >>> model = torch.compile(create("tiny", 10, T=2), options=compile_options("reduce-overhead"))
        >>> compile_options("reduce-overhead")["triton.cudagraphs"]   # mode's options are kept
        True
    """
    from torch._inductor import config, list_mode_options

    options = dict(list_mode_options(mode))
    if static_launch and hasattr(config, "static_launch_user_defined_triton_kernels"):
        options["static_launch_user_defined_triton_kernels"] = True
        if STATIC_LAUNCH_ENV not in os.environ:  # an explicit setting is the user's to keep
            if _compile_workers_running():
                warnings.warn(
                    "inductor's compile workers started before compile_options(): they launch "
                    "our kernels through Triton's launcher (more host time per launch in "
                    "compiled graphs outside CUDA graphs). Call compile_options() before the "
                    f"first torch.compile, or set {STATIC_LAUNCH_ENV}=1.", stacklevel=2)
            os.environ[STATIC_LAUNCH_ENV] = "1"
    return options


def compiled_kernel_launchers() -> dict[str, int]:
    """How the compiled graphs this process has loaded launch our kernels: the number of kernels
    on inductor's static CUDA launcher (``"static"``) and on Triton's (``"triton"``). Empty until
    a graph launching them has loaded (only on CUDA: elsewhere the custom ops launch them)."""
    from torch._inductor.codecache import PyCodeCache
    from torch._inductor.runtime.triton_heuristics import CachingAutotuner

    if _kernels is None:
        return {}
    counts, seen = {"static": 0, "triton": 0}, set()
    for module in [*PyCodeCache.modules, *PyCodeCache.modules_no_attr.values()]:
        for value in vars(module).values():
            name = getattr(getattr(value, "fn", None), "__name__", "")
            if (isinstance(value, CachingAutotuner) and id(value) not in seen
                    and name in _kernels.KERNEL_NAMES):
                seen.add(id(value))
                counts["static" if value.is_statically_launchable() else "triton"] += 1
    return {kind: n for kind, n in counts.items() if n}


def _compile_workers_running() -> bool:
    """Whether this process has started inductor's pool of compile workers (False where this torch
    keeps the pool elsewhere: only the warning depends on it)."""
    from torch._inductor.async_compile import AsyncCompile

    cache_info = getattr(AsyncCompile.process_pool, "cache_info", None)
    return cache_info is not None and cache_info().currsize > 0


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def _check_tensor(name: str, t: object, device: torch.device) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but x is on {device}; put them on one device")
    return t


def _check_per_channel(name: str, t: object, channels: int, device: torch.device) -> None:
    t = _check_tensor(name, t, device)
    if t.shape != (channels,):
        raise ValueError(f"{name} must have shape [C] = [{channels}] (C: dim 2 of x), got {list(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")


def fixed_width(width_rule: str, kappa0: float | None) -> float:
    """The ``fixed`` rule's width: ``kappa0``, 1.0 when left out. Another rule computes its own
    width, so a ``kappa0`` given with it would silently do nothing: refused.

    Example:
        >>> fixed_width("fixed", None), fixed_width("fixed", 0.5)
        (1.0, 0.5)
    """
    if kappa0 is None:
        return 1.0
    if width_rule != "fixed":
        raise InvalidInput(f"kappa0={kappa0} sets the width of width_rule='fixed' only; "
                           f"width_rule={width_rule!r} computes its own (drop kappa0, or use 'fixed')")
    if not (isinstance(kappa0, (int, float)) and math.isfinite(kappa0) and kappa0 > 0):
        raise InvalidInput(f"kappa0 must be a positive finite number, got {kappa0!r}")
    return float(kappa0)


def validate(
    x: object, gamma: object, beta: object, rho: object, *, residual: object, running_mean: object,
    running_var: object, training: bool, momentum: float, eps: float, vth: float, alpha: float,
    learn_tau: bool, tau: object, surrogate: str, width_rule: str, kappa0: float,
    skip: object = None, timesteps: object = None,
) -> None:
    """Raise ValueError/TypeError naming the argument for anything the op cannot compute."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 3:
        raise ValueError(f"x must have shape [T, B, C, *S] (at least 3 dims), got {list(x.shape)}")
    full_shape = list(x.shape)
    if timesteps is not None:
        if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
            raise ValueError(f"timesteps must be a positive int, got {timesteps!r}")
        if x.shape[0] != 1:
            raise ValueError("with timesteps, x must be one timestep [1, B, C, *S] (the input at "
                             f"every step), got shape {list(x.shape)}")
        full_shape[0] = timesteps
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"x must be float16, bfloat16, float32 or float64, got {x.dtype}")
    T, B, C = x.shape[:3]
    for name, size in (("T", T), ("B", B), ("C", C)):
        if size == 0:
            raise ValueError(f"x has {name} = 0 (shape {list(x.shape)}); nothing to compute")
    if x.numel() == 0:
        raise ValueError(f"x has an empty spatial dim (shape {list(x.shape)})")
    device = x.device
    _check_per_channel("gamma", gamma, C, device)
    _check_per_channel("beta", beta, C, device)
    if learn_tau:
        if tau is not None:
            raise ValueError(f"tau={tau!r} is the decay of learn_tau=False; a learnable decay is "
                             "sigmoid(rho): pass rho, or learn_tau=False with tau")
        if rho is None:
            raise TypeError("rho is None: a learnable decay needs rho (tau = sigmoid(rho)), a 0-d tensor; "
                            "for a fixed decay pass learn_tau=False, tau=...")
        rho = _check_tensor("rho", rho, device)
        if rho.dim() != 0:
            raise ValueError(f"rho must be a 0-d tensor (tau = sigmoid(rho)), got shape {list(rho.shape)}")
        if not rho.is_floating_point():
            raise TypeError(f"rho must be a floating tensor, got {rho.dtype}")
    else:
        if isinstance(tau, bool) or not isinstance(tau, (int, float)):
            raise TypeError(f"with learn_tau=False, tau must be a number in [0, 1], got {tau!r}")
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"tau must lie in [0, 1], got {tau}")
    for name, extra in (("residual", residual), ("skip", skip)):
        if extra is not None:
            extra = _check_tensor(name, extra, device)
            if list(extra.shape) != full_shape:
                raise ValueError(f"{name} must have x's shape {full_shape} (over every timestep), "
                                 f"got {list(extra.shape)}")
            if not extra.is_floating_point():
                raise TypeError(f"{name} must be a floating tensor, got {extra.dtype}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("pass running_mean and running_var together, or neither")
    if running_mean is not None:
        _check_per_channel("running_mean", running_mean, C, device)
        _check_per_channel("running_var", running_var, C, device)
    if not training:
        if running_mean is None:
            raise ValueError("training=False (eval mode) needs running_mean and running_var")
    elif x.numel() // C < 2:
        raise ValueError(f"training needs more than one value per channel, got x of shape {list(x.shape)}")
    check_choice("surrogate", surrogate, SURROGATES)
    check_choice("width_rule", width_rule, WIDTH_RULES)
    for name, value in (("vth", vth), ("kappa0", kappa0), ("eps", eps)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha)):
        raise ValueError(f"alpha must be a finite number, got {alpha!r}")
    if not (isinstance(momentum, (int, float)) and 0.0 <= momentum <= 1.0):
        raise ValueError(f"momentum must lie in [0, 1], got {momentum!r}")


def tdbn_plif(
    x: Tensor,
    gamma: Tensor,
    beta: Tensor,
    rho: Tensor | None,
    *,
    residual: Tensor | None = None,
    skip: Tensor | None = None,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    training: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    vth: float = 0.5,
    alpha: float = 1.0,
    learn_tau: bool = True,
    tau: float | None = None,
    surrogate: str = "rect",
    width_rule: str = "mpdagl",
    kappa0: float | None = None,
    sync_stats: bool = False,
    check_finite: bool = False,
    backend: str = "auto",
    timesteps: int | None = None,
) -> Tensor:
    """tdBN -> PLIF with the adaptive surrogate gradient, fused.

    Args:
        x: ``[T, B, C, *S]`` float16/bfloat16/float32/float64 (contiguous or channels-last).
        gamma, beta: ``[C]`` tdBN affine parameters.
        rho: 0-d tensor, tau = sigmoid(rho); may be None when ``learn_tau=False``.
        residual: ``[T, B, C, *S]`` added after the affine step, before the neuron.
        skip: ``[T, B, C, *S]`` added to the spikes (a ResNet shortcut after the neuron), in the
            same pass that writes them; its gradient is the incoming gradient.
        running_mean, running_var: ``[C]``; updated in place when training, used in eval.
        training: batch statistics (True) or running statistics (False).
        tau: fixed decay used when ``learn_tau=False``.
        surrogate: ``rect`` | ``triangle`` | ``sigmoid`` | ``atan``.
        width_rule: ``mpdagl`` | ``lsg`` | ``fixed``.
        kappa0: the width of ``width_rule="fixed"`` (default 1.0); refused with another rule,
            which computes its own.
        sync_stats: in training, batch statistics over every process of the default
            ``torch.distributed`` group (all processes must call the op together).
        check_finite: raise ValueError when x (or residual) holds NaN or Inf, which would
            otherwise silently give no spikes. It reads a flag back from the device (a sync).
        backend: ``auto`` (Triton on CUDA, reference elsewhere; ``$MPDAGL_BACKEND`` overrides),
            ``triton`` or ``torch``.
        timesteps: x is then one timestep ``[1, B, C, *S]``, the input at every one of
            ``timesteps`` steps (direct encoding): the same as ``x.expand(timesteps, ...)``, but
            the fused kernels read x once per tile and sum its gradient over T themselves.

    Returns:
        Spikes ``[T, B, C, *S]`` in x's dtype and layout, exactly 0 or 1 (plus ``skip``).

    Example:
        >>> x = torch.randn(4, 2, 3, 5, 5)
        >>> s = tdbn_plif(x, torch.ones(3), torch.zeros(3), torch.tensor(-1.386))
        >>> s.shape, bool(((s == 0) | (s == 1)).all())
        (torch.Size([4, 2, 3, 5, 5]), True)
    """
    kappa0 = fixed_width(width_rule, kappa0)
    validate(x, gamma, beta, rho, residual=residual, running_mean=running_mean,
             running_var=running_var, training=training, momentum=momentum, eps=eps, vth=vth,
             alpha=alpha, learn_tau=learn_tau, tau=tau, surrogate=surrogate,
             width_rule=width_rule, kappa0=kappa0, skip=skip, timesteps=timesteps)
    if check_finite:
        for name, t in (("x", x), ("residual", residual)):
            if t is not None and not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} holds NaN or Inf (shape {list(t.shape)}); a neuron would "
                                 "silently never fire")
    sync = bool(sync_stats and training and world_size() > 1)
    way = route(resolve_backend(backend, x.device), x, sync, torch.compiler.is_compiling())
    if way.name == "reference":
        if timesteps is not None:
            x = x.expand(timesteps, *x.shape[1:])
        return reference.tdbn_plif(
            x, gamma, beta, rho, residual=residual, skip=skip, running_mean=running_mean,
            running_var=running_var, training=training, momentum=momentum, eps=eps, vth=vth,
            alpha=alpha, learn_tau=learn_tau, tau=tau, surrogate=surrogate,
            width_rule=width_rule, kappa0=kappa0, sync_stats=sync,
        )
    # the kernels index per-channel tensors as dense vectors (a no-op for parameters)
    gamma, beta = gamma.contiguous(), beta.contiguous()
    if not training:
        running_mean, running_var = running_mean.contiguous(), running_var.contiguous()
    # tau = sigmoid(rho) and the surrogate widths are worked out inside the kernels: no chain of
    # small PyTorch ops per layer
    options = (float(eps), float(vth), float(alpha), surrogate, width_rule, float(kappa0), sync,
               timesteps or x.shape[0])
    tau = 0.0 if learn_tau else float(tau)
    rho = rho if learn_tau else None
    if way.name == "eager":
        with _on_device_of(x):
            return _EagerTdBNPLIF.apply(x, gamma, beta, rho, residual, skip,
                                        (running_mean, running_var, training, tau, *options),
                                        float(momentum) if training else None)
    # a compiled op is functional: it never writes the running statistics, it returns the batch's
    stats = (None, None) if training else (running_mean, running_var)
    op = _fwd_inductor_op if way.name == "inductor" else _fwd_op
    spikes, mean, var, _ = op(x, gamma, beta, rho, residual, skip, *stats, training, tau, *options)
    if training and running_mean is not None:
        n = spikes.numel() // x.shape[2] * (world_size() if sync else 1)  # ranks hold equal batches
        _update_running_stats(running_mean, running_var, mean, var, n, momentum)
    return spikes


def _on_device_of(x: Tensor):
    """Triton launches on the current CUDA device: for an eager call on another device, x's
    becomes current (the autograd engine runs the backward on x's device by itself; compiled
    graphs carry inductor's device guards)."""
    if x.is_cuda and x.device.index != torch.cuda.current_device():
        return torch.cuda.device(x.device)
    return contextlib.nullcontext()


def _update_running_stats(running_mean: Tensor, running_var: Tensor, mean: Tensor, var: Tensor,
                         n: int, momentum: float) -> None:
    """Batch norm's update of the running statistics from a batch's mean and biased var over
    ``n`` values per channel (the running var gets the unbiased one), in place."""
    with torch.no_grad():
        # one foreach op: inductor updates both buffers in one kernel, not one per buffer
        torch._foreach_lerp_([running_mean, running_var], [mean.to(running_mean.dtype),
                             (var * (n / (n - 1))).to(running_var.dtype)], momentum)
