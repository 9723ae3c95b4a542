"""Fused tdBN -> PLIF forward and adaptive-surrogate backward through time.

What it computes (docs/method.md), per channel c of ``x [T, B, C, *S]``:

    y_t = scale_c * x_t + shift_c (+ residual_t),  scale_c = gamma_c * alpha * Vth / sqrt(var_c + eps),
                                                    shift_c = beta_c - mean_c * scale_c
    V_t = tau * V_{t-1} * (1 - S_{t-1}) + y_t,     S_t = [V_t >= Vth]

and backward, from dL/dS_t, going t = T-1 .. 0 (reset not detached):

    dL/dV_t = (dL/dS_t - tau * V_t * dL/dV_{t+1}) * h(V_t - Vth; kappa_t) + tau * (1 - S_t) * dL/dV_{t+1}
    dy_t = dL/dV_t,   dtau = sum dL/dV_t * V_{t-1} * (1 - S_{t-1}),   then batch-norm backward to x.

Kernels (all tiles are 2-D ``[BLOCK_R, BLOCK_K]``; a whole tile runs every timestep):

- ``_stats_partial_kernel``   training statistics: per channel (count, mean, M2) of ``row_iters``
  consecutive row blocks: sums of x - shift and its square (shift: the channel mean of the first
  tile) accumulate elementwise in registers, reduced once at the end. Grid: NCHW-like ``(row
  groups * col blocks, C)``; channels-last ``(row groups, channel blocks)``, with ``row_iters``
  chosen for about STATS_PROGRAMS programs.
- ``_stats_finalize_kernel``  merges the per-program partials into mean and biased var, and
  (eager calls) moves the running statistics towards them in place. Grid ``(cdiv(C, BLOCK_C),)``.
- ``_forward_kernel``         normalize + affine + residual + LIF recurrence; writes the spikes
  (plus a shortcut ``skip`` added after firing, when given); its first program also writes the
  surrogate widths ``[2]`` (kappa_first, kappa_rest) that the backward pass reads.
  Grid: NCHW-like ``(row blocks * col blocks, C)``; channels-last ``(row blocks, channel
  blocks)``, tiles of FORWARD_TILE elements.
- ``_backward_kernel``        the statistics grid with smaller tiles (``backward_tile(T)``), each
  program walking ``row_iters`` row blocks (about BACKWARD_PROGRAMS programs); recomputes y and V
  from x (a tuple of T register tiles, never memory), runs the recurrence backward. Launched
  twice: first it writes per-program channel sums of dy, dy * xhat and the tau-gradient term,
  then (WRITE_DX) dx, which needs their channel means, and dresidual; in that pass the first
  program of each channel block also writes dgamma and dbeta from the sums, and the very first
  one d(rho). For an x broadcast over T (one input at every step, SUM_DX) the dx pass adds the T
  gradients in registers and writes one timestep.
- ``_sum_partials_kernel``    between the two: adds the ``[P, 3, C]`` per-program sums up to
  ``[3, C]``. Grid ``(cdiv(3C, BLOCK_C),)``. (A PyTorch ``sum`` did this before; inductor split it
  into two kernels.)

The decay tau = sigmoid(rho), the surrogate widths (``surrogates.kappas``, from the channel mean
of gamma) and the parameter gradients are computed inside the kernels, so a layer's forward +
backward launches no PyTorch op besides the kernels (under torch.compile the running statistics
are updated by the caller, so that the op stays functional; inductor fuses that update).

Two memory layouts are handled without copies: "channel-major" (each (t, b, c) holds a contiguous
block of S spatial values: rows = b, cols = s, one channel per program) and "channels-last" (C is
innermost: rows = the merged (b, s) index, cols = c). Any stride over T works (0 included: an
input broadcast over T is read in place), and channel-major tiles take any stride over B.

Saved for backward per element: nothing but the layer input x (and the residual when one is
given), in their own dtypes; per channel: mean and var (compute dtype); per layer: the two
surrogate widths. The membrane trajectory is recomputed from x in registers, so no float32 copy
of V or y ever reaches memory. HBM passes per training step: stats (read x), forward (read x,
write S), backward sums (read x, read dS), backward dx (read x, read dS, write dx) = 8 passes of
the activation (a skip adds one read to the forward and saves the separate add's three).

Math runs in float32 (float64 for float64 inputs, which the tests use as the exact oracle).
Synchronized batch statistics across processes (``--sync-bn``) plug in between the passes: the
caller merges the per-channel (count, mean, var) before the forward pass and the backward sums
before the dx pass, so the kernels themselves never communicate.
"""

from __future__ import annotations

import functools
import math
import operator
from typing import NamedTuple

import torch
import triton
import triton.language as tl

SURROGATE_IDS = {"rect": 0, "triangle": 1, "sigmoid": 2, "atan": 3}
WIDTH_RULE_IDS = {"fixed": 0, "lsg": 1, "mpdagl": 2}
#: every kernel below, by name: how the benchmarks and tests find (and stub) our launches
KERNEL_NAMES = ("_stats_partial_kernel", "_stats_finalize_kernel", "_forward_kernel",
                "_backward_kernel", "_sum_partials_kernel")
PI = tl.constexpr(math.pi)
CHANNEL_CHUNK = tl.constexpr(32)  # channels per step when one program reduces over all of them


# ----------------------------------------------------------------------------------------------
# Tile helpers
# ----------------------------------------------------------------------------------------------


@triton.jit
def _tile_at(row_block, col_block, chan_program, n_rows, n_cols, n_chan, stride_row, stride_chan,
             CHANNELS_LAST: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
             INT64: tl.constexpr):
    """Offsets within one timestep, mask, channel index and channel mask of one tile.

    The channel index is ``[1, 1]`` (channel-major: one channel per program, ``chan_program``) or
    ``[1, BLOCK_K]`` (channels-last), so per-channel loads broadcast against the tile either way.
    """
    rows = row_block * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = col_block * BLOCK_K + tl.arange(0, BLOCK_K)
    if INT64:
        rows = rows.to(tl.int64)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    offs = rows[:, None] * stride_row + cols[None, :]
    if CHANNELS_LAST:
        chans = cols[None, :]
    else:
        chans = tl.full([1, 1], 0, tl.int32) + chan_program
        if INT64:
            offs += chan_program.to(tl.int64) * stride_chan
        else:
            offs += chan_program * stride_chan
    return offs, mask, chans, chans < n_chan


@triton.jit
def _program(n_col_blocks, row_iters, CHANNELS_LAST: tl.constexpr):
    """(first row block, column block) of this program: it walks ``row_iters`` consecutive row
    blocks. Grids: channels-last ``(row groups, column blocks)``; channel-major ``(row groups *
    column blocks, C)``, one channel per program."""
    pid0 = tl.program_id(0)
    if CHANNELS_LAST:
        return pid0 * row_iters, tl.program_id(1)
    return (pid0 // n_col_blocks) * row_iters, pid0 % n_col_blocks


@triton.jit
def _wide(stride, INT64: tl.constexpr):
    """A stride in 64 bits when offsets may pass 2**31 (t * stride can, even when a stride fits)."""
    if INT64:
        stride = stride.to(tl.int64)
    return stride


@triton.jit
def _scalar(value, COMPUTE: tl.constexpr):
    """A float argument in the compute dtype. Float arguments are declared float64 so that
    float64 math sees thresholds such as 0.4 unrounded (Triton passes Python floats as float32
    otherwise); ``tl.full`` keeps the value exact under the CPU interpreter too."""
    return tl.full([], value, COMPUTE)


@triton.jit
def _sqrt(a, COMPUTE: tl.constexpr):
    if COMPUTE == tl.float64:
        root = tl.sqrt(a)
    else:
        root = tl.sqrt_rn(a)  # IEEE-rounded, as torch computes it
    return root


@triton.jit
def _affine(mean_ptr, var_ptr, gamma_ptr, beta_ptr, chans, chan_mask, eps, vth, alpha,
            COMPUTE: tl.constexpr):
    """Per-channel (scale, shift, mean, rstd) so that y = scale * x + shift."""
    mean = tl.load(mean_ptr + chans, mask=chan_mask, other=0).to(COMPUTE)
    var = tl.load(var_ptr + chans, mask=chan_mask, other=1).to(COMPUTE)
    gamma = tl.load(gamma_ptr + chans, mask=chan_mask, other=0).to(COMPUTE)
    beta = tl.load(beta_ptr + chans, mask=chan_mask, other=0).to(COMPUTE)
    rstd = 1.0 / _sqrt(var + eps, COMPUTE)
    scale = gamma * (alpha * vth) * rstd
    shift = beta - mean * scale
    return scale, shift, mean, rstd


@triton.jit
def _decay(rho_ptr, tau, LEARN_TAU: tl.constexpr, COMPUTE: tl.constexpr):
    """tau = sigmoid(rho) for a learnable decay, else the fixed ``tau``."""
    if LEARN_TAU:
        decay = tl.sigmoid(tl.load(rho_ptr).to(COMPUTE))
    else:
        decay = _scalar(tau, COMPUTE)
    return decay


@triton.jit
def _channel_total(ptr, n_chan, COMPUTE: tl.constexpr):
    """Sum of the ``n_chan`` values at ``ptr`` (a per-channel vector), in one program."""
    total = tl.zeros([CHANNEL_CHUNK], COMPUTE)
    for c0 in range(0, n_chan, CHANNEL_CHUNK):
        c = c0 + tl.arange(0, CHANNEL_CHUNK)
        total += tl.load(ptr + c, mask=c < n_chan, other=0).to(COMPUTE)
    return tl.sum(total, axis=0)


@triton.jit
def _widths(gamma_ptr, n_chan, tau, vth, kappa0, gamma_floor, WIDTH_RULE: tl.constexpr,
            COMPUTE: tl.constexpr):
    """(kappa_first, kappa_rest) of the width rule (docs/method.md#width-rules; the readable version is
    ``surrogates.kappas``), from gamma and tau: one program's loop over C values instead of a
    chain of small PyTorch ops per layer."""
    if WIDTH_RULE == 0:  # fixed
        first = _scalar(kappa0, COMPUTE)
        rest = first
    else:
        spread = _sqrt(1.0 + tau * tau, COMPUTE)  # std ratio of V at t > 1 to t = 1 (Theorem 2)
        if WIDTH_RULE == 1:  # lsg
            first = (2.0 * vth) * spread
            rest = first
        else:  # mpdagl
            g = tl.abs(_channel_total(gamma_ptr, n_chan, COMPUTE) / n_chan)
            g = tl.maximum(g, _scalar(gamma_floor, COMPUTE))
            first = g * (2.0 * vth)
            rest = first * spread
    return first, rest


@triton.jit
def _lif_step(x_ptr, res_ptr, x_off, off, mask, scale, shift, tau, v, s, vth,
              HAS_RESIDUAL: tl.constexpr, COMPUTE: tl.constexpr):
    """One timestep: load x_t, normalize + affine (+ residual), V_t = tau V (1 - S) + y, fire."""
    x = tl.load(x_ptr + x_off, mask=mask, other=0).to(COMPUTE)
    y = x * scale + shift
    if HAS_RESIDUAL:
        y += tl.load(res_ptr + off, mask=mask, other=0).to(COMPUTE)
    v = tau * v * (1.0 - s) + y
    s = tl.where(v >= vth, 1.0, 0.0).to(COMPUTE)
    return x, v, s


@triton.jit
def _surrogate(u, kappa, SURROGATE: tl.constexpr):
    """h(u; kappa): rect, triangle, sigmoid, atan (each integrates to 1)."""
    if SURROGATE == 0:
        h = tl.where(tl.abs(u) < kappa * 0.5, 1.0 / kappa, 0.0)
    elif SURROGATE == 1:
        h = (2.0 / kappa) * tl.maximum(1.0 - 2.0 * tl.abs(u) / kappa, 0.0)
    elif SURROGATE == 2:
        a = 4.0 / kappa
        sg = tl.sigmoid(a * u)
        h = a * sg * (1.0 - sg)
    else:
        a = 2.0 / kappa
        z = (PI * 0.5) * a * u
        h = (a * 0.5) / (1.0 + z * z)
    return h


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _per_channel(a, CHANNELS_LAST: tl.constexpr):
    """Sum of a tile per channel: ``[BLOCK_K]`` (channels-last) or a scalar (one channel)."""
    if CHANNELS_LAST:
        total = tl.sum(a, axis=0)
    else:
        total = tl.sum(tl.sum(a, axis=1), axis=0)
    return total


@triton.jit(do_not_specialize=["row_iters"])
def _stats_partial_kernel(x_ptr, partial_ptr, n_rows, n_cols, n_col_blocks, n_chan,
                          x_stride_t, stride_row, stride_chan, row_iters,
                          T: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK_R: tl.constexpr,
                          BLOCK_K: tl.constexpr, INT64: tl.constexpr, COMPUTE: tl.constexpr):
    first, col_block = _program(n_col_blocks, row_iters, CHANNELS_LAST)
    x_stride_t = _wide(x_stride_t, INT64)
    # values per channel in the first tile and in the whole run (the same for every channel of
    # a channels-last tile; masked channels are never stored)
    row_start = first * BLOCK_R
    if CHANNELS_LAST:
        cols = 1
    else:
        cols = tl.minimum(n_cols - col_block * BLOCK_K, BLOCK_K)
    first_count = (tl.minimum(n_rows - row_start, BLOCK_R) * cols * T).to(COMPUTE)
    n = (tl.minimum(n_rows - row_start, row_iters * BLOCK_R) * cols * T).to(COMPUTE)
    # Shift: the channel's mean over this program's first tile, so that sums of (x - shift) and
    # (x - shift)^2 lose nothing to cancellation. They accumulate elementwise over the run (no
    # reduction, no barrier inside the loop: the loads of successive tiles overlap); one
    # reduction at the end gives (count, mean, M2).
    offs, mask, chans, chan_mask = _tile_at(first, col_block, tl.program_id(1), n_rows, n_cols,
                                            n_chan, stride_row, stride_chan, CHANNELS_LAST,
                                            BLOCK_R, BLOCK_K, INT64)
    xs = ()
    first_sum = tl.zeros([BLOCK_R, BLOCK_K], COMPUTE)
    for t in tl.static_range(T):
        x = tl.load(x_ptr + t * x_stride_t + offs, mask=mask, other=0).to(COMPUTE)
        xs = xs + (x,)
        first_sum += x
    shift = _per_channel(first_sum, CHANNELS_LAST) / first_count
    if CHANNELS_LAST:
        shift_tile = shift[None, :]
    else:
        shift_tile = shift
    dev = tl.zeros([BLOCK_R, BLOCK_K], COMPUTE)
    dev2 = tl.zeros([BLOCK_R, BLOCK_K], COMPUTE)
    for t in tl.static_range(T):  # the first tile, from registers
        d = tl.where(mask, xs[t] - shift_tile, 0.0)
        dev += d
        dev2 += d * d
    for i in range(1, row_iters):
        offs, mask, chans, chan_mask = _tile_at(first + i, col_block, tl.program_id(1), n_rows,
                                                n_cols, n_chan, stride_row, stride_chan,
                                                CHANNELS_LAST, BLOCK_R, BLOCK_K, INT64)
        for t in tl.static_range(T):
            x = tl.load(x_ptr + t * x_stride_t + offs, mask=mask, other=0).to(COMPUTE)
            d = tl.where(mask, x - shift_tile, 0.0)
            dev += d
            dev2 += d * d
    total_dev = _per_channel(dev, CHANNELS_LAST)
    mean_dev = total_dev / n
    m2 = tl.maximum(_per_channel(dev2, CHANNELS_LAST) - total_dev * mean_dev, 0.0)
    base = partial_ptr + tl.program_id(0) * 3 * n_chan + chans  # partial is [P, 3, C]
    tl.store(base, n, mask=chan_mask)
    tl.store(base + n_chan, shift + mean_dev, mask=chan_mask)
    tl.store(base + 2 * n_chan, m2, mask=chan_mask)


@triton.jit
def _stats_finalize_kernel(partial_ptr, mean_ptr, var_ptr, running_mean_ptr, running_var_ptr,
                           n_partials, n_chan, running_mean_stride, running_var_stride,
                           momentum: tl.float64, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
                           COMPUTE: tl.constexpr, UPDATE_RUNNING: tl.constexpr):
    chans = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    chan_mask = chans < n_chan
    total = tl.zeros([BLOCK_C], COMPUTE)
    weighted = tl.zeros([BLOCK_C], COMPUTE)
    for p0 in range(0, n_partials, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        m = (p[:, None] < n_partials) & chan_mask[None, :]
        ptrs = partial_ptr + p[:, None] * 3 * n_chan + chans[None, :]
        count = tl.load(ptrs, mask=m, other=0)
        part_mean = tl.load(ptrs + n_chan, mask=m, other=0)
        total += tl.sum(count, axis=0)
        weighted += tl.sum(count * part_mean, axis=0)
    mean = weighted / tl.maximum(total, 1.0)
    m2 = tl.zeros([BLOCK_C], COMPUTE)
    for p0 in range(0, n_partials, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        m = (p[:, None] < n_partials) & chan_mask[None, :]
        ptrs = partial_ptr + p[:, None] * 3 * n_chan + chans[None, :]
        count = tl.load(ptrs, mask=m, other=0)
        part_mean = tl.load(ptrs + n_chan, mask=m, other=0)
        part_m2 = tl.load(ptrs + 2 * n_chan, mask=m, other=0)
        delta = part_mean - mean[None, :]
        m2 += tl.sum(part_m2 + count * delta * delta, axis=0)
    tl.store(mean_ptr + chans, mean, mask=chan_mask)
    tl.store(var_ptr + chans, m2 / tl.maximum(total, 1.0), mask=chan_mask)
    if UPDATE_RUNNING:  # running <- running + momentum * (batch - running), unbiased var
        w = _scalar(momentum, COMPUTE)
        mean_ptrs = running_mean_ptr + chans * running_mean_stride
        var_ptrs = running_var_ptr + chans * running_var_stride
        old_mean = tl.load(mean_ptrs, mask=chan_mask).to(COMPUTE)
        old_var = tl.load(var_ptrs, mask=chan_mask).to(COMPUTE)
        unbiased = m2 / tl.maximum(total - 1.0, 1.0)
        tl.store(mean_ptrs, old_mean + w * (mean - old_mean), mask=chan_mask)
        tl.store(var_ptrs, old_var + w * (unbiased - old_var), mask=chan_mask)


@triton.jit
def _sum_partials_kernel(partial_ptr, out_ptr, n_partials, n_cols, BLOCK_P: tl.constexpr,
                         BLOCK_C: tl.constexpr, COMPUTE: tl.constexpr):
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < n_cols
    total = tl.zeros([BLOCK_P, BLOCK_C], COMPUTE)
    for p0 in range(0, n_partials, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        m = (p[:, None] < n_partials) & col_mask[None, :]
        total += tl.load(partial_ptr + p[:, None] * n_cols + cols[None, :], mask=m, other=0)
    tl.store(out_ptr + cols, tl.sum(total, axis=0), mask=col_mask)


@triton.jit
def _forward_kernel(x_ptr, res_ptr, skip_ptr, out_ptr, widths_ptr, mean_ptr, var_ptr, gamma_ptr,
                    beta_ptr, rho_ptr, n_rows, n_cols, n_col_blocks, n_chan, x_stride_t, stride_t,
                    stride_row, stride_chan, eps: tl.float64, vth: tl.float64, alpha: tl.float64,
                    tau: tl.float64, kappa0: tl.float64, gamma_floor: tl.float64,
                    T: tl.constexpr, WIDTH_RULE: tl.constexpr, LEARN_TAU: tl.constexpr,
                    HAS_RESIDUAL: tl.constexpr, HAS_SKIP: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, INT64: tl.constexpr,
                    COMPUTE: tl.constexpr):
    eps, vth, alpha = _scalar(eps, COMPUTE), _scalar(vth, COMPUTE), _scalar(alpha, COMPUTE)
    row_block, col_block = _program(n_col_blocks, 1, CHANNELS_LAST)
    x_stride_t, stride_t = _wide(x_stride_t, INT64), _wide(stride_t, INT64)
    offs, mask, chans, chan_mask = _tile_at(row_block, col_block, tl.program_id(1), n_rows, n_cols,
                                            n_chan, stride_row, stride_chan, CHANNELS_LAST,
                                            BLOCK_R, BLOCK_K, INT64)
    scale, shift, mean, rstd = _affine(mean_ptr, var_ptr, gamma_ptr, beta_ptr, chans, chan_mask,
                                       eps, vth, alpha, COMPUTE)
    tau = _decay(rho_ptr, tau, LEARN_TAU, COMPUTE)
    if tl.program_id(0) == 0:
        if tl.program_id(1) == 0:  # the surrogate widths, for the backward pass
            kappa_first, kappa_rest = _widths(gamma_ptr, n_chan, tau, vth, kappa0, gamma_floor,
                                              WIDTH_RULE, COMPUTE)
            tl.store(widths_ptr, kappa_first)
            tl.store(widths_ptr + 1, kappa_rest)
    v = tl.zeros([BLOCK_R, BLOCK_K], COMPUTE)
    s = tl.zeros([BLOCK_R, BLOCK_K], COMPUTE)
    for t in tl.static_range(T):
        x, v, s = _lif_step(x_ptr, res_ptr, t * x_stride_t + offs, t * stride_t + offs, mask,
                            scale, shift, tau, v, s, vth, HAS_RESIDUAL, COMPUTE)
        out = s
        if HAS_SKIP:  # a shortcut added after firing (ResNet blocks): one pass fewer than an add
            out += tl.load(skip_ptr + t * stride_t + offs, mask=mask, other=0).to(COMPUTE)
        tl.store(out_ptr + t * stride_t + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["row_iters"])
def _backward_kernel(grad_ptr, x_ptr, res_ptr, dx_ptr, dres_ptr, partial_ptr, sums_ptr,
                     dy_sums_ptr, dgamma_ptr, dbeta_ptr, drho_ptr, widths_ptr, mean_ptr, var_ptr,
                     gamma_ptr, beta_ptr, rho_ptr, n_rows, n_cols, n_col_blocks, n_chan,
                     x_stride_t, stride_t, stride_row, stride_chan, row_iters,
                     eps: tl.float64, vth: tl.float64, alpha: tl.float64, tau: tl.float64,
                     dy_count: tl.float64,
                     T: tl.constexpr, SURROGATE: tl.constexpr,
                     LEARN_TAU: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                     WRITE_RESIDUAL_GRAD: tl.constexpr, WRITE_DX: tl.constexpr,
                     SUM_DX: tl.constexpr, BATCH_STATS: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, INT64: tl.constexpr,
                     COMPUTE: tl.constexpr):
    eps, vth, alpha = _scalar(eps, COMPUTE), _scalar(vth, COMPUTE), _scalar(alpha, COMPUTE)
    first, col_block = _program(n_col_blocks, row_iters, CHANNELS_LAST)
    x_stride_t, stride_t = _wide(x_stride_t, INT64), _wide(stride_t, INT64)
    offs, mask, chans, chan_mask = _tile_at(first, col_block, tl.program_id(1), n_rows, n_cols,
                                            n_chan, stride_row, stride_chan, CHANNELS_LAST,
                                            BLOCK_R, BLOCK_K, INT64)
    scale, shift, mean, rstd = _affine(mean_ptr, var_ptr, gamma_ptr, beta_ptr, chans, chan_mask,
                                       eps, vth, alpha, COMPUTE)
    tau = _decay(rho_ptr, tau, LEARN_TAU, COMPUTE)
    if WRITE_DX:
        # The parameter gradients from this batch's channel sums (complete before this pass):
        # the first program of each channel block writes its channels, the very first one also
        # the decay's gradient. Done before the main loop, so that none of it stays live there.
        if tl.program_id(0) == 0:
            sum_dy = tl.load(sums_ptr + chans, mask=chan_mask, other=0)
            sum_dy_xhat = tl.load(sums_ptr + n_chan + chans, mask=chan_mask, other=0)
            tl.store(dgamma_ptr + chans, (sum_dy_xhat * (alpha * vth)).to(dgamma_ptr.dtype.element_ty),
                     mask=chan_mask)
            tl.store(dbeta_ptr + chans, sum_dy.to(dbeta_ptr.dtype.element_ty), mask=chan_mask)
            if LEARN_TAU:
                if tl.program_id(1) == 0:
                    dtau = _channel_total(sums_ptr + 2 * n_chan, n_chan, COMPUTE)
                    tl.store(drho_ptr, (dtau * tau * (1.0 - tau)).to(drho_ptr.dtype.element_ty))
    kappa_first = tl.load(widths_ptr).to(COMPUTE)
    kappa_rest = tl.load(widths_ptr + 1).to(COMPUTE)
    if WRITE_DX and BATCH_STATS:  # channel means of dy and dy * xhat, from the sums pass
        dy_count = _scalar(dy_count, COMPUTE)
        mean_dy = tl.load(dy_sums_ptr + chans, mask=chan_mask, other=0).to(COMPUTE) / dy_count
        mean_dy_xhat = tl.load(dy_sums_ptr + n_chan + chans, mask=chan_mask,
                               other=0).to(COMPUTE) / dy_count
    # the channel sums stay elementwise over the whole run: one reduction, one partial per program
    acc_dy = tl.zeros([BLOCK_R, BLOCK_K], COMPUTE)
    acc_dy_xhat = tl.zeros([BLOCK_R, BLOCK_K], COMPUTE)
    acc_dtau = tl.zeros([BLOCK_R, BLOCK_K], COMPUTE)

    for i in range(row_iters):
        offs, mask, chans, chan_mask = _tile_at(first + i, col_block, tl.program_id(1), n_rows,
                                                n_cols, n_chan, stride_row, stride_chan,
                                                CHANNELS_LAST, BLOCK_R, BLOCK_K, INT64)
        # Forward again, keeping x and V of every timestep in registers.
        xs = ()
        vs = ()
        v = tl.zeros([BLOCK_R, BLOCK_K], COMPUTE)
        s = tl.zeros([BLOCK_R, BLOCK_K], COMPUTE)
        for t in tl.static_range(T):
            x, v, s = _lif_step(x_ptr, res_ptr, t * x_stride_t + offs, t * stride_t + offs, mask,
                                scale, shift, tau, v, s, vth, HAS_RESIDUAL, COMPUTE)
            xs = xs + (x,)
            vs = vs + (v,)

        dv_next = tl.zeros([BLOCK_R, BLOCK_K], COMPUTE)  # dL/dV_{t+1}
        dx_total = tl.zeros([BLOCK_R, BLOCK_K], COMPUTE)  # SUM_DX: x is one input at every step
        for t in tl.static_range(T - 1, -1, -1):
            v = vs[t]
            g = tl.load(grad_ptr + t * stride_t + offs, mask=mask, other=0).to(COMPUTE)
            if t == 0:
                kappa = kappa_first
            else:
                kappa = kappa_rest
            h = _surrogate(v - vth, kappa, SURROGATE)
            if t == T - 1:
                dv = g * h
            else:
                not_spiked = tl.where(v >= vth, 0.0, 1.0)
                dv = (g - tau * v * dv_next) * h + tau * not_spiked * dv_next
            if WRITE_DX:
                if BATCH_STATS:
                    xhat = (xs[t] - mean) * rstd
                    dx = scale * (dv - mean_dy - xhat * mean_dy_xhat)
                else:
                    dx = scale * dv
                if SUM_DX:
                    dx_total += dx
                else:
                    tl.store(dx_ptr + t * stride_t + offs, dx.to(dx_ptr.dtype.element_ty),
                             mask=mask)
                if WRITE_RESIDUAL_GRAD:
                    tl.store(dres_ptr + t * stride_t + offs, dv.to(dres_ptr.dtype.element_ty),
                             mask=mask)
            else:
                acc_dy += dv
                acc_dy_xhat += dv * ((xs[t] - mean) * rstd)
                if t > 0:
                    v_prev = vs[t - 1]
                    acc_dtau += dv * tl.where(v_prev >= vth, 0.0, v_prev)
            dv_next = dv
        if WRITE_DX and SUM_DX:
            tl.store(dx_ptr + offs, dx_total.to(dx_ptr.dtype.element_ty), mask=mask)

    if not WRITE_DX:
        sum_dy = tl.sum(acc_dy, axis=0, keep_dims=True)
        sum_dy_xhat = tl.sum(acc_dy_xhat, axis=0, keep_dims=True)
        sum_dtau = tl.sum(acc_dtau, axis=0, keep_dims=True)
        if not CHANNELS_LAST:
            sum_dy = tl.sum(sum_dy, axis=1, keep_dims=True)
            sum_dy_xhat = tl.sum(sum_dy_xhat, axis=1, keep_dims=True)
            sum_dtau = tl.sum(sum_dtau, axis=1, keep_dims=True)
        base = partial_ptr + tl.program_id(0) * 3 * n_chan + chans  # partial is [P, 3, C]
        tl.store(base, sum_dy, mask=chan_mask)
        tl.store(base + n_chan, sum_dy_xhat, mask=chan_mask)
        tl.store(base + 2 * n_chan, sum_dtau, mask=chan_mask)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------


class Layout(NamedTuple):
    """How ``x [T, B, C, *S]`` maps onto 2-D tiles, from its strides (``Layout.of``)."""

    channels_last: bool
    n_rows: int
    n_cols: int
    n_chan: int
    stride_row: int
    stride_chan: int
    int64: bool

    @staticmethod
    def of(x: torch.Tensor) -> "Layout | None":
        """x's layout, or None when the tiles cannot walk it in place. Symbolic sizes (a body
        traced under torch.compile with dynamic shapes) are specialized to their values: the
        launch geometry is worked out per shape."""
        try:
            return _layout(x.shape, x.stride())
        except TypeError:  # a SymInt: unhashable
            return _layout(tuple(map(int, x.shape)), tuple(map(int, x.stride())))


@functools.lru_cache(maxsize=4096)
def _layout(shape: tuple[int, ...], strides: tuple[int, ...]) -> Layout | None:
    _, batch, chan = shape[:3]
    spatial = shape[3:]
    s_b, s_c = strides[1:3]
    spatial_size = math.prod(spatial)
    int64 = math.prod(shape) >= 2**31 or sum((n - 1) * st for n, st in zip(shape, strides)) >= 2**31
    if spatial_size > 1 and _packed(spatial, strides[3:], inner=1):
        return Layout(False, batch, spatial_size, chan, s_b, s_c, int64)
    if s_c == 1 or chan == 1:
        if spatial_size == 1:
            return Layout(True, batch, chan, chan, s_b, 1, int64)
        row = strides[-1]
        if _packed(spatial, strides[3:], inner=row) and (batch == 1 or s_b == row * spatial_size):
            return Layout(True, batch * spatial_size, chan, chan, row, 1, int64)
    if spatial_size == 1:
        return Layout(False, batch, 1, chan, s_b, s_c, int64)
    return None


def _packed(shape, strides, inner: int) -> bool:
    """Whether dims ``shape`` with ``strides`` form one run of equally spaced elements."""
    expected = inner
    for n, st in reversed(list(zip(shape, strides))):
        if n != 1 and st != expected:
            return False
        expected *= n
    return True


# Launch parameters. Module-level so that ``python -m bench.tune`` can sweep them on a GPU; the
# values follow that sweep on an H200 (``python -m bench.tune`` repeats it).
FORWARD_TILE = 2048  # elements per program in the forward kernel (and at most in the stats kernel)
STATS_BUDGET = 16384  # stats tile elements times (T + 2): T loads in flight plus two accumulators
BACKWARD_BUDGET = 2048  # backward elements per program times next_pow2(T), clamped to 256-512
MIN_TILE = 256  # no statistics or backward tile is smaller (2 elements per thread at 4 warps)
CHANNELS_LAST_BLOCK_K = 64  # channels per channels-last tile ...
CHANNELS_LAST_WIDE_FROM = 512  # ... doubled from this many channels on
EIGHT_WARPS_FROM = 4096  # tiles of at least this many elements get 8 warps, smaller ones 4
STATS_PROGRAMS = 1024  # the statistics kernel walks runs of row blocks until about this many programs
BACKWARD_PROGRAMS = 2048  # likewise the backward kernel: each program writes one [3, BLOCK_K] partial
KNOBS = ("FORWARD_TILE", "STATS_BUDGET", "BACKWARD_BUDGET", "MIN_TILE", "CHANNELS_LAST_BLOCK_K",
         "CHANNELS_LAST_WIDE_FROM", "EIGHT_WARPS_FROM", "STATS_PROGRAMS", "BACKWARD_PROGRAMS")
_knob_values = operator.itemgetter(*KNOBS)


def stats_tile(T: int) -> int:
    """Elements per statistics tile, a power of two: the T loads of a tile are in flight together
    next to two accumulators, so the tile shrinks with T (at most ~128 values per thread at 4 warps)."""
    return max(MIN_TILE, 1 << (STATS_BUDGET // (T + 2)).bit_length() - 1)


def backward_tile(T: int) -> int:
    """Elements per backward program: it keeps x and V of all T timesteps in registers, so the
    tile shrinks with T. 512 elements at 4 warps (4 per thread and timestep) was fastest at
    T = 2 and T = 4 on an H200; see ``python -m bench.tune`` and ``python -m bench.registers``."""
    return max(MIN_TILE, min(512, BACKWARD_BUDGET // triton.next_power_of_2(T)))


def blocks(layout: Layout, batch: int, tile: int) -> tuple[int, int]:
    if layout.channels_last:
        wide = 2 if layout.n_cols >= CHANNELS_LAST_WIDE_FROM else 1
        block_k = min(triton.next_power_of_2(layout.n_cols), CHANNELS_LAST_BLOCK_K * wide)
        block_r = max(1, tile // block_k)
        block_r = min(block_r, triton.next_power_of_2(layout.n_rows))
    else:
        block_k = min(triton.next_power_of_2(layout.n_cols), tile)
        block_r = min(triton.next_power_of_2(batch), max(1, tile // block_k))
    return block_r, block_k


def num_warps(block_r: int, block_k: int) -> int:
    return 8 if block_r * block_k >= EIGHT_WARPS_FROM else 4


class Launch(NamedTuple):
    """Geometry of one launch of a tiled kernel."""

    grid: tuple[int, ...]
    block_r: int
    block_k: int
    col_blocks: int
    partials: int  # rows P of the [P, 3, C] per-program partial results
    num_warps: int
    row_iters: int = 1  # row blocks per program (statistics and backward kernels)


def plan(kernel: str, layout: Layout, T: int, batch: int) -> Launch:
    """The launch geometry of ``kernel`` (``"stats"``, ``"finalize"``, ``"forward"``,
    ``"backward"`` or ``"sums"``) for a layout. Memoized: working it out took more host time than
    a small kernel's GPU time. The key holds the launch parameters above, so changing one (as
    ``bench.tune`` does) takes effect at the next launch."""
    return _plan(kernel, layout, T, batch, _knob_values(globals()))


@functools.lru_cache(maxsize=4096)
def _plan(kernel: str, layout: Layout, T: int, batch: int, _knobs: tuple) -> Launch:
    if kernel == "finalize":  # BLOCK_P partials x BLOCK_C channels per step, one channel block each
        block_c = min(triton.next_power_of_2(layout.n_chan), 16)
        partials = _plan("stats", layout, T, batch, _knobs).partials
        return Launch((triton.cdiv(layout.n_chan, block_c),), 64, block_c, 1, partials, 4)
    if kernel == "sums":  # the backward's [P, 3, C] partials: BLOCK_P x BLOCK_C of the 3C columns
        block_c = min(triton.next_power_of_2(3 * layout.n_chan), 32)
        partials = _plan("backward", layout, T, batch, _knobs).partials
        return Launch((triton.cdiv(3 * layout.n_chan, block_c),), 64, block_c, 1, partials, 4)
    if kernel == "stats":
        tile = stats_tile(T)
    elif kernel == "forward":
        tile = FORWARD_TILE
    else:
        tile = backward_tile(T)
    block_r, block_k = blocks(layout, batch, tile)
    row_blocks = triton.cdiv(layout.n_rows, block_r)
    col_blocks = triton.cdiv(layout.n_cols, block_k)
    row_iters = 1
    if kernel != "forward":
        # several row blocks per program when tiles are many: fewer, larger partials to reduce
        # (a channels-last tile of 8 rows would write 3 floats per channel for 16 values read)
        tiles = row_blocks * col_blocks * (1 if layout.channels_last else layout.n_chan)
        programs = STATS_PROGRAMS if kernel == "stats" else BACKWARD_PROGRAMS
        row_iters = min(row_blocks, max(1, tiles // programs))
        row_blocks = triton.cdiv(row_blocks, row_iters)
    warps = 4 if kernel == "stats" else num_warps(block_r, block_k)
    if layout.channels_last:
        grid, partials = (row_blocks, col_blocks), row_blocks
    else:
        grid, partials = (row_blocks * col_blocks, layout.n_chan), row_blocks * col_blocks
    return Launch(grid, block_r, block_k, col_blocks, partials, warps, row_iters)


def _memory(x: torch.Tensor) -> torch.Tensor:
    """The tensor whose pointer the kernels get for ``x``: x, or its first timestep when x is a
    broadcast over T (the kernels take x's T stride, 0, as a number). Same pointer either way;
    inside a triton_op the first timestep is what lets inductor hand over the broadcast's dense
    source as it is, where the broadcast itself would be copied out T times."""
    return x[0] if x.shape[0] > 1 and x.stride(0) == 0 else x


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


_TL_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}


#: eager launches through :class:`_DirectLauncher`; ``bench.dispatch`` sets it False to compare
#: with Triton's own ``kernel[grid](...)``
DIRECT_LAUNCH = True


class _DirectLauncher:
    """``kernel[grid](*args, num_warps=..., **constexprs)`` for eager calls, with less host time.

    Triton's ``JITFunction.run`` works out every argument's specialization and its cache key
    again at each launch: ~36 us of Python per launch of ours on a 2-core CPU, against ~16 us
    here (``python -m bench.dispatch``; a layer's forward + backward makes six). Here each launch
    gets a key that determines that specialization, only finer: the current device, the warps,
    each integer's value, each tensor argument's dtype and 16-byte alignment, each constexpr by
    name (float arguments are never specialized). A key's first launch goes through Triton,
    which compiles the variant (or finds it) and returns it; later launches call its launcher
    with the arguments ``JITFunction.run`` would pass (tests/direct_launch.py compares them)."""

    def __init__(self, kernel: triton.runtime.JITFunction):
        self.kernel = kernel
        # key -> (compiled variant, the names of the constexprs after the positional arguments)
        self.variants: dict[tuple, tuple[object, tuple[str, ...]]] = {}

    def __getitem__(self, grid: tuple[int, ...]):
        return functools.partial(self.launch, grid)

    def launch(self, grid: tuple[int, ...], *args, num_warps: int, **constexprs) -> None:
        device = triton.runtime.driver.active.get_current_device()
        try:  # positional arguments: integers, floats and tensors
            key = (device, num_warps, tuple(constexprs.items()),
                   *[a if type(a) is int else float if type(a) is float
                     else (a.dtype, a.data_ptr() % 16 == 0) for a in args])
        except AttributeError:  # something else: Triton knows what to do with it
            key = None
        variant = self.variants.get(key)
        if variant is None:
            compiled = self.kernel[grid](*args, num_warps=num_warps, **constexprs)
            # every parameter given (none left to its default), a compiled kernel (no future)
            if (key is not None and len(args) + len(constexprs) == len(self.kernel.arg_names)
                    and hasattr(compiled, "packed_metadata")):
                self.variants[key] = (compiled, tuple(self.kernel.arg_names[len(args):]))
            return
        compiled, constexpr_names = variant
        values = (*args, *[constexprs[name] for name in constexpr_names])
        stream = triton.runtime.driver.active.get_current_stream(device)
        grid_1 = grid[1] if len(grid) > 1 else 1
        grid_2 = grid[2] if len(grid) > 2 else 1
        hooks = triton.knobs.runtime
        compiled.run(grid[0], grid_1, grid_2, stream, compiled.function, compiled.packed_metadata,
                     compiled.launch_metadata(grid, stream, *values), hooks.launch_enter_hook,
                     hooks.launch_exit_hook, *values)


_DIRECT_LAUNCHERS: dict[int, _DirectLauncher] = {}  # by id(): a JITFunction hashes its source


def _direct(kernel):
    """How an eager call launches ``kernel``: through :class:`_DirectLauncher` where Triton
    compiles it, else as it is (Triton's interpreter; the benchmarks' stand-ins)."""
    if not (DIRECT_LAUNCH and isinstance(kernel, triton.runtime.JITFunction)
            and hasattr(triton, "knobs")):
        return kernel
    launcher = _DIRECT_LAUNCHERS.get(id(kernel))
    if launcher is None:
        launcher = _DIRECT_LAUNCHERS[id(kernel)] = _DirectLauncher(kernel)
    return launcher


def batch_stats(x: torch.Tensor, layout: Layout, wrap=None,
                running: tuple[torch.Tensor, torch.Tensor, float] | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of ``x`` over every axis but C. With ``running =
    (running_mean, running_var, momentum)`` the finalizing kernel also moves the running
    statistics towards the batch's (the variance unbiased), in place, as batch norm does.

    ``wrap``, when given, turns each kernel into what is launched (``torch.library.wrap_triton``
    inside a ``triton_op``, so that inductor launches the kernels from its generated code);
    likewise below."""
    wrap = wrap or _direct
    cdtype = compute_dtype(x.dtype)
    T, batch = int(x.shape[0]), int(x.shape[1])  # int(): see Layout.of
    p = plan("stats", layout, T, batch)
    partial = torch.empty((p.partials, 3, layout.n_chan), dtype=cdtype, device=x.device)
    wrap(_stats_partial_kernel)[p.grid](
        _memory(x), partial, layout.n_rows, layout.n_cols, p.col_blocks, layout.n_chan,
        int(x.stride(0)), layout.stride_row, layout.stride_chan, p.row_iters,
        T=T, CHANNELS_LAST=layout.channels_last, BLOCK_R=p.block_r, BLOCK_K=p.block_k,
        INT64=layout.int64, COMPUTE=_TL_DTYPES[cdtype], num_warps=p.num_warps,
    )
    mean = torch.empty(layout.n_chan, dtype=cdtype, device=x.device)
    var = torch.empty_like(mean)
    f = plan("finalize", layout, T, batch)
    # without running statistics their pointers get partial, which this kernel only reads: no
    # argument aliases a written one (inductor would copy it)
    running_mean, running_var, momentum = running or (partial, partial, 0.0)
    wrap(_stats_finalize_kernel)[f.grid](
        partial, mean, var, running_mean, running_var, f.partials, layout.n_chan,
        running_mean.stride(0), running_var.stride(0), momentum,
        BLOCK_P=f.block_r, BLOCK_C=f.block_k, COMPUTE=_TL_DTYPES[cdtype],
        UPDATE_RUNNING=running is not None, num_warps=f.num_warps,
    )
    return mean, var


class Widths(NamedTuple):
    """The surrogate-width rule (``surrogates.kappas``), worked out by the forward kernel."""

    rule: str
    kappa0: float
    gamma_floor: float


def forward(x: torch.Tensor, layout: Layout, out: torch.Tensor, gamma: torch.Tensor,
            beta: torch.Tensor, rho: torch.Tensor | None, tau: float,
            residual: torch.Tensor | None, mean: torch.Tensor, var: torch.Tensor, eps: float,
            vth: float, alpha: float, widths: Widths, skip: torch.Tensor | None = None,
            wrap=None) -> torch.Tensor:
    """Writes the spikes of ``x`` (plus ``skip``, when given) into ``out``; returns the surrogate
    widths ``[2]`` (kappa_first, kappa_rest) for the backward pass. The decay is sigmoid(``rho``),
    or the fixed ``tau`` when ``rho`` is None.

    ``out``, ``residual`` and ``skip`` share x's strides after T; x may differ in its T stride (0
    for a broadcast input).
    """
    T = int(x.shape[0])  # int(): see Layout.of
    p = plan("forward", layout, T, int(x.shape[1]))
    wrap = wrap or _direct
    kappas = torch.empty(2, dtype=mean.dtype, device=x.device)
    # unused pointer arguments get mean, which the kernel only reads (x itself would be realized
    # once per argument by inductor when it needs a layout conversion)
    wrap(_forward_kernel)[p.grid](
        _memory(x), residual if residual is not None else mean, skip if skip is not None else mean,
        out, kappas, mean, var, gamma, beta, rho if rho is not None else mean, layout.n_rows,
        layout.n_cols, p.col_blocks, layout.n_chan, int(x.stride(0)), int(out.stride(0)),
        layout.stride_row, layout.stride_chan, eps, vth, alpha, float(tau), float(widths.kappa0),
        float(widths.gamma_floor), T=T, WIDTH_RULE=WIDTH_RULE_IDS[widths.rule],
        LEARN_TAU=rho is not None, HAS_RESIDUAL=residual is not None, HAS_SKIP=skip is not None,
        CHANNELS_LAST=layout.channels_last,
        BLOCK_R=p.block_r, BLOCK_K=p.block_k, INT64=layout.int64,
        COMPUTE=_TL_DTYPES[compute_dtype(x.dtype)], num_warps=p.num_warps,
    )
    return kappas


def backward(grad: torch.Tensor, x: torch.Tensor, layout: Layout, dx: torch.Tensor,
             dresidual: torch.Tensor | None, gamma: torch.Tensor, beta: torch.Tensor,
             rho: torch.Tensor | None, tau: float, residual: torch.Tensor | None,
             mean: torch.Tensor, var: torch.Tensor, kappas: torch.Tensor, eps: float, vth: float,
             alpha: float, surrogate: str, batch_stats: bool, global_dy_sums=None,
             wrap=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Writes dx (and dresidual); returns (dgamma, dbeta, drho), drho None when ``rho`` is None.
    ``kappas`` are the forward's surrogate widths.

    Two passes: the first writes per-program channel sums (dy, dy * xhat and the decay-gradient
    term), the second writes dx, which needs their means, and the parameter gradients.
    ``grad``, ``dx``, ``residual`` and ``dresidual`` share one set of strides; x shares them after
    T. A ``dx`` of one timestep (``[1, B, C, *S]``, for an x broadcast over T) gets the total over
    T of the gradient, summed in registers. ``global_dy_sums(sums, count)``, when given, returns
    the ``[2, C]`` sums of dy and dy * xhat over every process and their count (synchronized
    batch statistics); the dx pass uses their means.
    """
    cdtype = compute_dtype(x.dtype)
    T = int(x.shape[0])  # int(): see Layout.of
    p = plan("backward", layout, T, int(x.shape[1]))
    wrap = wrap or _direct
    partial = torch.empty((p.partials, 3, layout.n_chan), dtype=cdtype, device=x.device)
    dgamma, dbeta = torch.empty_like(gamma), torch.empty_like(beta)
    # a one-element vector, not rho's 0-dim shape: inductor fills a 0-dim empty with a kernel
    drho = None if rho is None else rho.new_empty(1)
    x_stride_t, stride_t = int(x.stride(0)), int(grad.stride(0))
    sum_dx = T > 1 and dx.shape[0] == 1

    def launch(write_dx: bool, sums: torch.Tensor, dy_sums: torch.Tensor, dy_count: int) -> None:
        # unused pointer arguments get mean, which no kernel writes: no argument aliases a written
        # one (and x would be realized once per argument where inductor converts its layout)
        wrap(_backward_kernel)[p.grid](
            grad, _memory(x), residual if residual is not None else mean, dx,
            dresidual if dresidual is not None else mean, partial, sums, dy_sums, dgamma, dbeta,
            drho if drho is not None else mean, kappas, mean, var, gamma, beta,
            rho if rho is not None else mean, layout.n_rows, layout.n_cols, p.col_blocks,
            layout.n_chan, x_stride_t, stride_t, layout.stride_row, layout.stride_chan,
            p.row_iters, eps, vth, alpha, float(tau), float(dy_count),
            T=T, SURROGATE=SURROGATE_IDS[surrogate], LEARN_TAU=rho is not None,
            HAS_RESIDUAL=residual is not None, WRITE_RESIDUAL_GRAD=dresidual is not None,
            WRITE_DX=write_dx, SUM_DX=sum_dx, BATCH_STATS=batch_stats,
            CHANNELS_LAST=layout.channels_last,
            BLOCK_R=p.block_r, BLOCK_K=p.block_k, INT64=layout.int64,
            COMPUTE=_TL_DTYPES[cdtype], num_warps=p.num_warps,
        )

    launch(write_dx=False, sums=mean, dy_sums=mean, dy_count=1)
    sums = torch.empty((3, layout.n_chan), dtype=cdtype, device=x.device)
    r = plan("sums", layout, T, int(x.shape[1]))
    wrap(_sum_partials_kernel)[r.grid](partial, sums, r.partials, 3 * layout.n_chan,
                                       BLOCK_P=r.block_r, BLOCK_C=r.block_k,
                                       COMPUTE=_TL_DTYPES[cdtype], num_warps=r.num_warps)
    count = int(x.numel()) // layout.n_chan
    dy_sums, dy_count = (sums, count) if global_dy_sums is None else global_dy_sums(sums, count)
    launch(write_dx=True, sums=sums, dy_sums=dy_sums, dy_count=dy_count)
    return dgamma, dbeta, None if drho is None else drho.view_as(rho)
