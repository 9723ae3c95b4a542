"""Fused tdBN -> PLIF forward and adaptive-surrogate backward through time.

What it computes (SPEC.md sections 2-4), per channel c of ``x [T, B, C, *S]``:

    y_t = scale_c * x_t + shift_c (+ residual_t),  scale_c = gamma_c * alpha * Vth / sqrt(var_c + eps),
                                                    shift_c = beta_c - mean_c * scale_c
    V_t = tau * V_{t-1} * (1 - S_{t-1}) + y_t,     S_t = [V_t >= Vth]

and backward, from dL/dS_t, going t = T-1 .. 0 (reset not detached):

    dL/dV_t = (dL/dS_t - tau * V_t * dL/dV_{t+1}) * h(V_t - Vth; kappa_t) + tau * (1 - S_t) * dL/dV_{t+1}
    dy_t = dL/dV_t,   dtau = sum dL/dV_t * V_{t-1} * (1 - S_{t-1}),   then batch-norm backward to x.

Kernels (all tiles are 2-D ``[BLOCK_R, BLOCK_K]``; a whole tile runs every timestep):

- ``_stats_partial_kernel``   training statistics: per channel (count, mean, M2) of ``row_iters``
  consecutive row blocks, each tile loading all T timesteps before two reductions, the blocks
  merged with Chan's formula. Grid: NCHW-like ``(row groups * col blocks, C)``; channels-last
  ``(row groups, channel blocks)``, with ``row_iters`` chosen for about STATS_PROGRAMS programs.
- ``_stats_finalize_kernel``  merges the per-program partials into mean and biased var. Grid
  ``(cdiv(C, BLOCK_C),)``.
- ``_forward_kernel``         normalize + affine + residual + LIF recurrence; writes the spikes.
  Grid: NCHW-like ``(row blocks * col blocks, C)``; channels-last ``(row blocks, channel
  blocks)``, tiles of FORWARD_TILE elements.
- ``_backward_kernel``        same grid shape with smaller tiles (``backward_tile(T)``); recomputes y and V from x (a tuple of T register tiles, never memory),
  runs the recurrence backward; with ACCUMULATE it writes per-tile channel sums of dy, dy * xhat
  and the tau-gradient term, with WRITE_DX it writes dx (and dresidual). Training uses it twice
  (sums first, since dx needs their channel means); eval once with both flags.

Two memory layouts are handled without copies: "channel-major" (each (t, b, c) holds a contiguous
block of S spatial values: rows = b, cols = s, one channel per program) and "channels-last" (C is
innermost: rows = the merged (b, s) index, cols = c). Any stride over T works (0 included: an
input broadcast over T is read in place), and channel-major tiles take any stride over B.

Saved for backward per element: nothing but the layer input x (and the residual when one is
given), in their own dtypes; per channel: mean and var (compute dtype). The membrane trajectory is
recomputed from x in registers, so no float32 copy of V or y ever reaches memory. HBM passes per
training step: stats (read x), forward (read x, write S), backward sums (read x, read dS),
backward dx (read x, read dS, write dx) = 8 passes of the activation.

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
PI = tl.constexpr(math.pi)


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
def _tile(n_rows, n_cols, n_col_blocks, n_chan, stride_row, stride_chan, x_stride_t, stride_t,
          CHANNELS_LAST: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
          INT64: tl.constexpr):
    """This program's tile (see ``_tile_at``) and the T strides, 64-bit when offsets may pass
    2**31 (t * stride can, even when a stride fits)."""
    pid0 = tl.program_id(0)
    pid1 = tl.program_id(1)
    if CHANNELS_LAST:
        row_block = pid0
        col_block = pid1
    else:
        row_block = pid0 // n_col_blocks
        col_block = pid0 % n_col_blocks
    offs, mask, chans, chan_mask = _tile_at(row_block, col_block, pid1, n_rows, n_cols, n_chan,
                                            stride_row, stride_chan, CHANNELS_LAST, BLOCK_R,
                                            BLOCK_K, INT64)
    if INT64:
        x_stride_t = x_stride_t.to(tl.int64)
        stride_t = stride_t.to(tl.int64)
    return offs, mask, chans, chan_mask, x_stride_t, stride_t


@triton.jit
def _scalar(value, COMPUTE: tl.constexpr):
    """A float argument in the compute dtype. Float arguments are declared float64 so that
    float64 math sees thresholds such as 0.4 unrounded (Triton passes Python floats as float32
    otherwise); ``tl.full`` keeps the value exact under the CPU interpreter too."""
    return tl.full([], value, COMPUTE)


@triton.jit
def _affine(mean_ptr, var_ptr, gamma_ptr, beta_ptr, chans, chan_mask, eps, vth, alpha,
            COMPUTE: tl.constexpr):
    """Per-channel (scale, shift, mean, rstd) so that y = scale * x + shift."""
    mean = tl.load(mean_ptr + chans, mask=chan_mask, other=0).to(COMPUTE)
    var = tl.load(var_ptr + chans, mask=chan_mask, other=1).to(COMPUTE)
    gamma = tl.load(gamma_ptr + chans, mask=chan_mask, other=0).to(COMPUTE)
    beta = tl.load(beta_ptr + chans, mask=chan_mask, other=0).to(COMPUTE)
    if COMPUTE == tl.float64:
        rstd = 1.0 / tl.sqrt(var + eps)
    else:
        rstd = 1.0 / tl.sqrt_rn(var + eps)  # IEEE-rounded, as torch computes it
    scale = gamma * (alpha * vth) * rstd
    shift = beta - mean * scale
    return scale, shift, mean, rstd


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


@triton.jit
def _tile_moments(x_ptr, offs, mask, x_stride_t, T: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                  COMPUTE: tl.constexpr):
    """(count, mean, M2) per channel of one tile over all T timesteps: the T loads are issued
    before any reduction, then one reduction for the mean and one for M2."""
    xs = ()
    total = tl.zeros(offs.shape, COMPUTE)
    for t in tl.static_range(T):
        x = tl.load(x_ptr + t * x_stride_t + offs, mask=mask, other=0).to(COMPUTE)
        xs = xs + (x,)
        total += x
    count = _per_channel(mask.to(COMPUTE), CHANNELS_LAST) * T
    mean = _per_channel(total, CHANNELS_LAST) / tl.maximum(count, 1.0)
    if CHANNELS_LAST:
        centre = mean[None, :]
    else:
        centre = mean
    squares = tl.zeros(offs.shape, COMPUTE)
    for t in tl.static_range(T):
        d = tl.where(mask, xs[t] - centre, 0.0)
        squares += d * d
    return count, mean, _per_channel(squares, CHANNELS_LAST)


@triton.jit(do_not_specialize=["row_iters"])
def _stats_partial_kernel(x_ptr, partial_ptr, n_rows, n_cols, n_col_blocks, n_chan,
                          x_stride_t, stride_row, stride_chan, row_iters,
                          T: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK_R: tl.constexpr,
                          BLOCK_K: tl.constexpr, INT64: tl.constexpr, COMPUTE: tl.constexpr):
    pid0 = tl.program_id(0)
    pid1 = tl.program_id(1)
    if CHANNELS_LAST:
        row_group = pid0
        col_block = pid1
        chans = col_block * BLOCK_K + tl.arange(0, BLOCK_K)
    else:
        row_group = pid0 // n_col_blocks
        col_block = pid0 % n_col_blocks
        chans = pid1
    if INT64:
        x_stride_t = x_stride_t.to(tl.int64)
    # row_iters consecutive row blocks per program, merged with Chan et al.'s formula
    first = row_group * row_iters
    offs, mask, _, _ = _tile_at(first, col_block, pid1, n_rows, n_cols, n_chan, stride_row,
                                stride_chan, CHANNELS_LAST, BLOCK_R, BLOCK_K, INT64)
    n, mean, m2 = _tile_moments(x_ptr, offs, mask, x_stride_t, T, CHANNELS_LAST, COMPUTE)
    for i in range(1, row_iters):
        offs, mask, _, _ = _tile_at(first + i, col_block, pid1, n_rows, n_cols, n_chan,
                                    stride_row, stride_chan, CHANNELS_LAST, BLOCK_R, BLOCK_K,
                                    INT64)
        count, tile_mean, tile_m2 = _tile_moments(x_ptr, offs, mask, x_stride_t, T,
                                                  CHANNELS_LAST, COMPUTE)
        merged = n + count
        weight = count / tl.maximum(merged, 1.0)
        delta = tile_mean - mean
        mean = mean + delta * weight
        m2 = m2 + tile_m2 + delta * delta * (n * weight)
        n = merged
    base = partial_ptr + pid0 * 3 * n_chan + chans  # partial is [P, 3, C]
    chan_mask = chans < n_chan
    tl.store(base, n, mask=chan_mask)
    tl.store(base + n_chan, mean, mask=chan_mask)
    tl.store(base + 2 * n_chan, m2, mask=chan_mask)


@triton.jit
def _stats_finalize_kernel(partial_ptr, mean_ptr, var_ptr, n_partials, n_chan,
                           BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, COMPUTE: tl.constexpr):
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


@triton.jit
def _forward_kernel(x_ptr, res_ptr, out_ptr, mean_ptr, var_ptr, gamma_ptr, beta_ptr, tau_ptr,
                    n_rows, n_cols, n_col_blocks, n_chan, x_stride_t, stride_t, stride_row, stride_chan,
                    eps: tl.float64, vth: tl.float64, alpha: tl.float64,
                    T: tl.constexpr, HAS_RESIDUAL: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, INT64: tl.constexpr,
                    COMPUTE: tl.constexpr):
    eps, vth, alpha = _scalar(eps, COMPUTE), _scalar(vth, COMPUTE), _scalar(alpha, COMPUTE)
    offs, mask, chans, chan_mask, x_stride_t, stride_t = _tile(
        n_rows, n_cols, n_col_blocks, n_chan, stride_row, stride_chan, x_stride_t, stride_t,
        CHANNELS_LAST, BLOCK_R, BLOCK_K, INT64)
    scale, shift, mean, rstd = _affine(mean_ptr, var_ptr, gamma_ptr, beta_ptr, chans, chan_mask,
                                       eps, vth, alpha, COMPUTE)
    tau = tl.load(tau_ptr).to(COMPUTE)
    v = tl.zeros([BLOCK_R, BLOCK_K], COMPUTE)
    s = tl.zeros([BLOCK_R, BLOCK_K], COMPUTE)
    for t in tl.static_range(T):
        x, v, s = _lif_step(x_ptr, res_ptr, t * x_stride_t + offs, t * stride_t + offs, mask,
                            scale, shift, tau, v, s, vth, HAS_RESIDUAL, COMPUTE)
        tl.store(out_ptr + t * stride_t + offs, s.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(grad_ptr, x_ptr, res_ptr, dx_ptr, dres_ptr, partial_ptr, dy_means_ptr,
                     mean_ptr, var_ptr, gamma_ptr, beta_ptr, tau_ptr, kappa_first_ptr,
                     kappa_rest_ptr, n_rows, n_cols, n_col_blocks, n_chan,
                     x_stride_t, stride_t, stride_row, stride_chan,
                     eps: tl.float64, vth: tl.float64, alpha: tl.float64,
                     T: tl.constexpr, SURROGATE: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                     WRITE_RESIDUAL_GRAD: tl.constexpr, ACCUMULATE: tl.constexpr,
                     WRITE_DX: tl.constexpr, BATCH_STATS: tl.constexpr,
                     CHANNELS_LAST: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
                     INT64: tl.constexpr, COMPUTE: tl.constexpr):
    eps, vth, alpha = _scalar(eps, COMPUTE), _scalar(vth, COMPUTE), _scalar(alpha, COMPUTE)
    offs, mask, chans, chan_mask, x_stride_t, stride_t = _tile(
        n_rows, n_cols, n_col_blocks, n_chan, stride_row, stride_chan, x_stride_t, stride_t,
        CHANNELS_LAST, BLOCK_R, BLOCK_K, INT64)
    scale, shift, mean, rstd = _affine(mean_ptr, var_ptr, gamma_ptr, beta_ptr, chans, chan_mask,
                                       eps, vth, alpha, COMPUTE)
    tau = tl.load(tau_ptr).to(COMPUTE)
    kappa_first = tl.load(kappa_first_ptr).to(COMPUTE)
    kappa_rest = tl.load(kappa_rest_ptr).to(COMPUTE)

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

    if WRITE_DX and BATCH_STATS:  # channel means of dy and dy * xhat, from the ACCUMULATE pass
        mean_dy = tl.load(dy_means_ptr + chans, mask=chan_mask, other=0).to(COMPUTE)
        mean_dy_xhat = tl.load(dy_means_ptr + n_chan + chans, mask=chan_mask, other=0).to(COMPUTE)
    acc_dy = tl.zeros([BLOCK_R, BLOCK_K], COMPUTE)
    acc_dy_xhat = tl.zeros([BLOCK_R, BLOCK_K], COMPUTE)
    acc_dtau = tl.zeros([BLOCK_R, BLOCK_K], COMPUTE)
    dv_next = tl.zeros([BLOCK_R, BLOCK_K], COMPUTE)  # dL/dV_{t+1}
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
        xhat = (xs[t] - mean) * rstd
        if ACCUMULATE:
            acc_dy += dv
            acc_dy_xhat += dv * xhat
            if t > 0:
                v_prev = vs[t - 1]
                acc_dtau += dv * tl.where(v_prev >= vth, 0.0, v_prev)
        if WRITE_DX:
            if BATCH_STATS:
                dx = scale * (dv - mean_dy - xhat * mean_dy_xhat)
            else:
                dx = scale * dv
            tl.store(dx_ptr + t * stride_t + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
            if WRITE_RESIDUAL_GRAD:
                tl.store(dres_ptr + t * stride_t + offs, dv.to(dres_ptr.dtype.element_ty),
                         mask=mask)
        dv_next = dv

    if ACCUMULATE:
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
        """x's layout, or None when the tiles cannot walk it in place."""
        return _layout(x.shape, x.stride())


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
# values follow that sweep on an H200 (bench/RESULTS.md says which shapes backed each choice).
FORWARD_TILE = 2048  # elements per program in the forward kernel (and at most in the stats kernel)
STATS_BUDGET = 8192  # stats elements per program times next_pow2(T): it holds all T tiles at once
BACKWARD_BUDGET = 2048  # backward elements per program times next_pow2(T), clamped to 256-512
MIN_TILE = 256  # no statistics or backward tile is smaller (2 elements per thread at 4 warps)
CHANNELS_LAST_BLOCK_K = 64  # channels per channels-last tile ...
CHANNELS_LAST_WIDE_FROM = 512  # ... doubled from this many channels on
EIGHT_WARPS_FROM = 4096  # tiles of at least this many elements run 8 warps, smaller ones 4
STATS_PROGRAMS = 1024  # the statistics kernel merges row blocks until about this many programs
KNOBS = ("FORWARD_TILE", "STATS_BUDGET", "BACKWARD_BUDGET", "MIN_TILE", "CHANNELS_LAST_BLOCK_K",
         "CHANNELS_LAST_WIDE_FROM", "EIGHT_WARPS_FROM", "STATS_PROGRAMS")
_knob_values = operator.itemgetter(*KNOBS)


def stats_tile(T: int) -> int:
    """Elements per statistics program: all T tiles are loaded before reducing, so the tile
    shrinks with T (no spills up to T = 16 at 4 warps)."""
    return max(MIN_TILE, min(FORWARD_TILE, STATS_BUDGET // triton.next_power_of_2(T)))


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
    row_iters: int = 1  # row blocks per program (statistics kernel)


def plan(kernel: str, layout: Layout, T: int, batch: int) -> Launch:
    """The launch geometry of ``kernel`` (``"stats"``, ``"finalize"``, ``"forward"`` or
    ``"backward"``) for a layout. Memoized: working it out took more host time than a small
    kernel's GPU time. The key holds the launch parameters above, so changing one (as
    ``bench.tune`` does) takes effect at the next launch."""
    return _plan(kernel, layout, T, batch, _knob_values(globals()))


@functools.lru_cache(maxsize=4096)
def _plan(kernel: str, layout: Layout, T: int, batch: int, _knobs: tuple) -> Launch:
    if kernel == "finalize":  # BLOCK_P partials x BLOCK_C channels per step, one channel block each
        block_c = min(triton.next_power_of_2(layout.n_chan), 16)
        partials = _plan("stats", layout, T, batch, _knobs).partials
        return Launch((triton.cdiv(layout.n_chan, block_c),), 64, block_c, 1, partials, 4)
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
    if kernel == "stats":
        # several row blocks per program when tiles are many: fewer partials for the finalize pass
        tiles = row_blocks * col_blocks * (1 if layout.channels_last else layout.n_chan)
        row_iters = min(row_blocks, max(1, tiles // STATS_PROGRAMS))
        row_blocks = triton.cdiv(row_blocks, row_iters)
        warps = 4
    else:
        warps = num_warps(block_r, block_k)
    if layout.channels_last:
        grid, partials = (row_blocks, col_blocks), row_blocks
    else:
        grid, partials = (row_blocks * col_blocks, layout.n_chan), row_blocks * col_blocks
    return Launch(grid, block_r, block_k, col_blocks, partials, warps, row_iters)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


_TL_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}


def batch_stats(x: torch.Tensor, layout: Layout) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of ``x`` over every axis but C."""
    cdtype = compute_dtype(x.dtype)
    p = plan("stats", layout, x.shape[0], x.shape[1])
    partial = torch.empty((p.partials, 3, layout.n_chan), dtype=cdtype, device=x.device)
    _stats_partial_kernel[p.grid](
        x, partial, layout.n_rows, layout.n_cols, p.col_blocks, layout.n_chan,
        x.stride(0), layout.stride_row, layout.stride_chan, p.row_iters,
        T=x.shape[0], CHANNELS_LAST=layout.channels_last, BLOCK_R=p.block_r, BLOCK_K=p.block_k,
        INT64=layout.int64, COMPUTE=_TL_DTYPES[cdtype], num_warps=p.num_warps,
    )
    mean = torch.empty(layout.n_chan, dtype=cdtype, device=x.device)
    var = torch.empty_like(mean)
    f = plan("finalize", layout, x.shape[0], x.shape[1])
    _stats_finalize_kernel[f.grid](
        partial, mean, var, f.partials, layout.n_chan,
        BLOCK_P=f.block_r, BLOCK_C=f.block_k, COMPUTE=_TL_DTYPES[cdtype], num_warps=f.num_warps,
    )
    return mean, var


def forward(x: torch.Tensor, layout: Layout, out: torch.Tensor, gamma: torch.Tensor,
            beta: torch.Tensor, tau: torch.Tensor, residual: torch.Tensor | None,
            mean: torch.Tensor, var: torch.Tensor, eps: float, vth: float, alpha: float) -> None:
    """Writes the spikes of ``x`` into ``out``.

    ``out`` and ``residual`` share x's strides after T; x may differ in its T stride (0 for a
    broadcast input).
    """
    p = plan("forward", layout, x.shape[0], x.shape[1])
    _forward_kernel[p.grid](
        x, residual if residual is not None else x, out, mean, var, gamma, beta, tau,
        layout.n_rows, layout.n_cols, p.col_blocks, layout.n_chan, x.stride(0), out.stride(0),
        layout.stride_row, layout.stride_chan, eps, vth, alpha,
        T=x.shape[0], HAS_RESIDUAL=residual is not None, CHANNELS_LAST=layout.channels_last,
        BLOCK_R=p.block_r, BLOCK_K=p.block_k, INT64=layout.int64,
        COMPUTE=_TL_DTYPES[compute_dtype(x.dtype)], num_warps=p.num_warps,
    )


def backward(grad: torch.Tensor, x: torch.Tensor, layout: Layout, dx: torch.Tensor,
             dresidual: torch.Tensor | None, gamma: torch.Tensor, beta: torch.Tensor,
             tau: torch.Tensor, residual: torch.Tensor | None, mean: torch.Tensor,
             var: torch.Tensor, kappa_first: torch.Tensor, kappa_rest: torch.Tensor, eps: float,
             vth: float, alpha: float, surrogate: str, batch_stats: bool,
             global_dy_means=None) -> torch.Tensor:
    """Writes dx (and dresidual) and returns this batch's channel sums ``[3, C]``: dy, dy * xhat,
    and the tau-gradient term.

    ``grad``, ``dx``, ``residual`` and ``dresidual`` share one set of strides; x shares them after
    T. ``global_dy_means(sums, count)``, when given, turns the local sums into the ``[2, C]``
    means over every process (synchronized batch statistics); the dx pass uses those.
    """
    cdtype = compute_dtype(x.dtype)
    T = x.shape[0]
    p = plan("backward", layout, T, x.shape[1])
    partial = torch.empty((p.partials, 3, layout.n_chan), dtype=cdtype, device=x.device)
    count = x.numel() // layout.n_chan

    def launch(accumulate: bool, write_dx: bool, dy_means: torch.Tensor) -> None:
        _backward_kernel[p.grid](
            grad, x, residual if residual is not None else x, dx,
            dresidual if dresidual is not None else dx, partial, dy_means, mean, var, gamma, beta,
            tau, kappa_first, kappa_rest, layout.n_rows, layout.n_cols, p.col_blocks,
            layout.n_chan, x.stride(0), dx.stride(0), layout.stride_row, layout.stride_chan,
            eps, vth, alpha,
            T=T, SURROGATE=SURROGATE_IDS[surrogate], HAS_RESIDUAL=residual is not None,
            WRITE_RESIDUAL_GRAD=dresidual is not None, ACCUMULATE=accumulate, WRITE_DX=write_dx,
            BATCH_STATS=batch_stats, CHANNELS_LAST=layout.channels_last, BLOCK_R=p.block_r,
            BLOCK_K=p.block_k, INT64=layout.int64, COMPUTE=_TL_DTYPES[cdtype],
            num_warps=p.num_warps,
        )

    if batch_stats:
        launch(accumulate=True, write_dx=False, dy_means=partial)
        sums = partial.sum(dim=0)
        dy_means = sums[:2] / count if global_dy_means is None else global_dy_means(sums, count)
        launch(accumulate=False, write_dx=True, dy_means=dy_means)
    else:
        launch(accumulate=True, write_dx=True, dy_means=partial)
        sums = partial.sum(dim=0)
    return sums
