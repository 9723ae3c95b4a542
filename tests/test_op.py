"""The Triton op (through the interpreter on CPU) against the readable PyTorch reference."""

import itertools

import pytest
import torch

import mpdagl_triton as M
from mpdagl_triton import SURROGATES, WIDTH_RULES
from mpdagl_triton.kernels.tdbn_plif import CHANNEL_CHUNK, Layout
from support.oracle import (Case, assert_close_to_max, check_float64, make_inputs, membrane_margin, run,
                    to_channels_last)


@pytest.mark.parametrize("surrogate,width_rule", list(itertools.product(SURROGATES, WIDTH_RULES)))
def test_every_surrogate_and_width_rule(surrogate, width_rule):
    want = check_float64(Case((3, 2, 4, 5, 6), surrogate=surrogate, width_rule=width_rule, seed=1))
    assert want["grads"]["rho"].abs() > 0


@pytest.mark.parametrize("T", [1, 2, 3, 8])
@pytest.mark.parametrize("spatial", [(), (7,), (5, 9)])
def test_timesteps_and_spatial_dims(T, spatial):
    want = check_float64(Case((T, 3, 5) + spatial, seed=T * 10 + len(spatial)))
    if T == 1:  # no V_{t-1} term: tau gets no gradient
        assert want["grads"]["rho"] == 0
    else:
        assert want["grads"]["rho"].abs() > 0


@pytest.mark.parametrize("gamma_mean", ["negative", "zero"])
def test_kernel_widths_use_the_floored_absolute_gamma_mean(gamma_mean):
    """The forward kernel works the mpdagl width out itself from the channel mean of gamma, over
    more channels than two steps of its channel loop: |mean| for a negative mean, the 1e-3
    floor for a zero one (atan: every element keeps a gradient at that width). Channels-last
    only: the widths do not depend on the layout, and it interprets 70 channels in few programs."""
    assert CHANNEL_CHUNK.value * 2 < 70
    case = Case((2, 3, 70, 2, 2), channels_last=True, surrogate="atan", seed=11)
    inputs = make_inputs(case)
    if gamma_mean == "negative":
        inputs["gamma"] = -inputs["gamma"]
    else:  # pairs (g, -g): mean 0 up to rounding, far below the floor
        inputs["gamma"][1::2] = -inputs["gamma"][0::2]
    got = run(case, inputs, "triton")
    want = run(case, inputs, "torch")
    assert torch.equal(got["spikes"], want["spikes"])
    for name in want["grads"]:
        assert_close_to_max(got["grads"][name], want["grads"][name], 1e-10, name)
    assert want["grads"]["x"].abs().max() > 0


@pytest.mark.parametrize("training", [True, False])
def test_strided_per_channel_tensors(training):
    """gamma, beta and the running statistics as every other element of longer tensors: the
    kernels index per-channel tensors as dense vectors, so the op must hand them dense ones."""
    inputs = make_inputs(Case((2, 3, 4, 3, 3), seed=13))
    results = {}
    for backend in ("triton", "torch"):
        # [C, 2] bases whose first columns are the per-channel tensors, strided by 2
        params = torch.stack([inputs["gamma"], inputs["beta"]]).repeat_interleave(2, 1)
        params = params.clone().requires_grad_()
        running = torch.stack([inputs["running_mean"], inputs["running_var"]]).repeat_interleave(2, 1)
        gamma, beta = params[0, ::2], params[1, ::2]
        assert not gamma.is_contiguous()
        x = inputs["x"].clone().requires_grad_()
        spikes = M.tdbn_plif(x, gamma, beta, inputs["rho"], running_mean=running[0, ::2],
                             running_var=running[1, ::2], training=training, backend=backend)
        spikes.backward(inputs["grad"])
        results[backend] = (spikes, x.grad, params.grad, running)
    for got, want in zip(results["triton"], results["torch"]):
        assert_close_to_max(got, want, 1e-10, "strided")


@pytest.mark.parametrize("learn_tau,residual", list(itertools.product([True, False], [True, False])))
@pytest.mark.slow
def test_learn_tau_and_residual(learn_tau, residual):
    want = check_float64(Case((4, 3, 6, 3, 5), learn_tau=learn_tau, residual=residual, seed=7))
    assert ("rho" in want["grads"]) == learn_tau
    assert ("residual" in want["grads"]) == residual


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.slow
def test_eval_mode_uses_running_stats(channels_last):
    case = Case((3, 4, 5, 6, 7), training=False, channels_last=channels_last, seed=3)
    inputs = make_inputs(case)
    check_float64(case)
    got = run(case, inputs, "triton")
    # running stats are read, not written, in eval
    assert torch.equal(got["running_mean"], inputs["running_mean"])
    assert torch.equal(got["running_var"], inputs["running_var"])


def test_running_stats_update_formula():
    case = Case((3, 4, 5, 6), seed=4)
    inputs = make_inputs(case)
    got = run(case, inputs, "triton")
    x = inputs["x"]
    dims = [0, 1, 3]
    mean = x.mean(dim=dims)
    unbiased_var = x.var(dim=dims, unbiased=True)
    torch.testing.assert_close(got["running_mean"], 0.9 * inputs["running_mean"] + 0.1 * mean)
    torch.testing.assert_close(got["running_var"], 0.9 * inputs["running_var"] + 0.1 * unbiased_var)


@pytest.mark.parametrize("channels_last,training", [(False, True), (True, True), (True, False)])
@pytest.mark.slow
def test_skip_is_added_to_the_spikes(channels_last, training):
    """A ResNet shortcut added by the pass that writes the spikes: the output is spikes + skip,
    skip's gradient is the incoming gradient, and everything else is as without it."""
    case = Case((3, 4, 6, 5, 7), channels_last=channels_last, residual=True, skip=True,
                training=training, seed=7)
    check_float64(case)
    inputs = make_inputs(case)
    got = run(case, inputs, "triton")
    without = run(Case(**{**case.__dict__, "skip": False}), {**inputs, "skip": None}, "triton")
    assert torch.equal(got["spikes"] - inputs["skip"], without["spikes"])
    assert torch.equal(got["grads"]["skip"], inputs["grad"])
    for name, grad in without["grads"].items():
        assert torch.equal(got["grads"][name], grad), name
    assert got["spikes"].stride() == inputs["x"].stride()


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.slow
def test_channels_last_5d(channels_last):
    case = Case((3, 4, 6, 5, 7), channels_last=channels_last, residual=True, seed=5)
    check_float64(case)
    x = make_inputs(case)["x"]
    layout = Layout.of(x)
    assert layout is not None and layout.channels_last == channels_last  # walked in place, no copy
    got = run(case, make_inputs(case), "triton")
    assert got["spikes"].stride() == x.stride()


@pytest.mark.parametrize(
    "shape,channels_last",
    [((2, 5, 3, 33, 70), False),  # several column tiles per channel
     ((2, 4, 3, 20, 30), True),  # several row tiles
     ((2, 9, 70), False)],  # several channel blocks
)
@pytest.mark.slow
def test_many_tiles_per_channel(shape, channels_last):
    check_float64(Case(shape, channels_last=channels_last, seed=11))


@pytest.mark.parametrize("programs", [1, 32])
@pytest.mark.parametrize("shape,channels_last", [((3, 5, 4, 5, 7), False), ((3, 5, 6, 4, 5), True)])
@pytest.mark.slow
def test_programs_walk_runs_of_row_blocks(shape, channels_last, programs, monkeypatch):
    """Small tiles and few programs: each statistics and backward program walks several row
    blocks (all of them with 1 program per column block; with 32, a few blocks each, the last
    run going past the rows) and still gives the float64 reference's statistics and gradients."""
    from mpdagl_triton.kernels import tdbn_plif as K

    T = shape[0]
    monkeypatch.setattr(K, "MIN_TILE", 8)
    monkeypatch.setattr(K, "FORWARD_TILE", 8)
    monkeypatch.setattr(K, "STATS_BUDGET", 8 * (T + 2))
    monkeypatch.setattr(K, "BACKWARD_BUDGET", 8 * 4)
    monkeypatch.setattr(K, "CHANNELS_LAST_BLOCK_K", 4)
    monkeypatch.setattr(K, "STATS_PROGRAMS", programs)
    monkeypatch.setattr(K, "BACKWARD_PROGRAMS", programs)
    x = make_inputs(Case(shape, channels_last=channels_last))["x"]
    layout = K.Layout.of(x)
    for kernel in ("stats", "backward"):
        plan = K.plan(kernel, layout, T, shape[1])
        assert plan.block_r * plan.block_k <= 8
        assert triton_cdiv(layout.n_rows, plan.block_r) >= 3, "the case must span several row blocks"
        assert plan.row_iters >= 2, f"{kernel} programs must walk several row blocks"
    mean, var = K.batch_stats(x, layout)
    want_mean = x.mean(dim=(0, 1, 3, 4))
    want_var = x.var(dim=(0, 1, 3, 4), unbiased=False)
    assert_close_to_max(mean, want_mean, 1e-12, "mean")
    assert_close_to_max(var, want_var, 1e-12, "var")
    check_float64(Case(shape, channels_last=channels_last, seed=5))


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_low_precision_matches_float64_reference(dtype, channels_last):
    case = Case((3, 4, 5, 6, 7), dtype=dtype, channels_last=channels_last, residual=True, seed=21)
    inputs = make_inputs(case)
    got = run(case, inputs, "triton")
    want = run(case, inputs, "torch", as_float64=True)
    assert got["spikes"].dtype == dtype
    assert set(got["spikes"].unique().tolist()) <= {0.0, 1.0}
    # float32 math can only disagree with float64 where V sits within rounding of Vth
    differs = got["spikes"].double() != want["spikes"]
    assert (membrane_margin(case, inputs)[differs] < 1e-4).all()
    assert differs.sum() <= 2
    # parameter gradients are float32 sums; dx and dresidual are stored in x's dtype
    storage_rtol = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    if differs.any():
        pytest.fail("spike flipped at the threshold; pick inputs away from ties for the gradient check")
    for name in ("gamma", "beta", "rho"):
        assert_close_to_max(got["grads"][name], want["grads"][name], 1e-4, name)
    for name in ("x", "residual"):
        assert got["grads"][name].dtype == dtype
        assert_close_to_max(got["grads"][name], want["grads"][name], storage_rtol, name)


@pytest.mark.slow
def test_strided_inputs_and_gradients():
    """Layouts the tiles can't walk, and residual/grad in other layouts, still give exact results."""
    base = Case((3, 4, 5, 6, 7), residual=True, seed=31)
    inputs = make_inputs(base)
    inputs["x"] = inputs["x"].transpose(3, 4).contiguous().transpose(3, 4)  # dense, W outermost
    inputs["residual"] = to_channels_last(inputs["residual"])
    inputs["grad"] = inputs["grad"][..., :].transpose(0, 1).contiguous().transpose(0, 1)
    assert Layout.of(inputs["x"]) is None
    got = run(base, inputs, "triton")
    want = run(base, inputs, "torch")
    assert torch.equal(got["spikes"], want["spikes"])
    assert got["spikes"].stride() == inputs["x"].stride()
    for name in want["grads"]:
        assert_close_to_max(got["grads"][name], want["grads"][name], 1e-10, name)
    sliced = Case((3, 4, 5, 6, 14), seed=32)
    sliced_inputs = make_inputs(sliced)
    sliced_inputs["x"] = sliced_inputs["x"][..., ::2]
    sliced_inputs["grad"] = sliced_inputs["grad"][..., ::2]
    sliced.shape = (3, 4, 5, 6, 7)
    got = run(sliced, sliced_inputs, "triton")
    want = run(sliced, sliced_inputs, "torch")
    assert torch.equal(got["spikes"], want["spikes"])
    for name in want["grads"]:
        assert_close_to_max(got["grads"][name], want["grads"][name], 1e-10, name)


def test_layout_detection():
    x = torch.zeros(2, 3, 4, 5, 6)
    assert not Layout.of(x).channels_last
    assert Layout.of(to_channels_last(x)).channels_last
    assert Layout.of(torch.zeros(2, 3, 4)).channels_last  # [T, B, C]: C innermost
    assert Layout.of(torch.zeros(2, 3, 4, 1, 1)).channels_last  # 1x1 spatial
    assert Layout.of(torch.zeros(6, 4, 2).permute(1, 2, 0)) is not None  # C strided, no spatial


@pytest.mark.parametrize("channels_last", [False, True])
def test_broadcast_over_time_is_read_in_place(channels_last):
    """Direct encoding: one stem output expanded over T (stride 0) is never copied T times."""
    case = Case((4, 3, 5, 6, 7), seed=41)
    inputs = make_inputs(case)
    frame = inputs["x"][0]
    if channels_last:
        frame = frame.contiguous(memory_format=torch.channels_last)
    inputs["x"] = frame.unsqueeze(0).expand(case.shape)
    assert Layout.of(inputs["x"]) is not None and Layout.of(inputs["x"]).channels_last == channels_last
    got = run(case, inputs, "triton")
    want = run(case, inputs, "torch")
    assert torch.equal(got["spikes"], want["spikes"])
    assert got["spikes"].stride()[1:] == frame.stride()
    for name in want["grads"]:
        assert_close_to_max(got["grads"][name], want["grads"][name], 1e-10, name)


@pytest.mark.parametrize("channels_last,training", [(False, True), (True, True), (True, False)])
def test_one_timestep_at_every_step_gets_its_gradient_summed_over_time(channels_last, training):
    """``timesteps``: x ``[1, B, C, *S]`` is the input at every step (direct encoding). The kernels
    read it in place and the dx pass writes its total over T (against the reference on the
    expanded input); the residual and skip stay per step."""
    case = Case((4, 3, 5, 6, 7), channels_last=channels_last, residual=True, skip=True,
                training=training, seed=43)
    inputs = make_inputs(case)
    inputs["x"] = inputs["x"][:1].clone()
    got = run(case, inputs, "triton", timesteps=4)
    want = run(case, inputs, "torch", timesteps=4)
    assert torch.equal(got["spikes"], want["spikes"]) and got["spikes"].shape == case.shape
    assert got["grads"]["x"].shape == (1, 3, 5, 6, 7)
    assert got["grads"]["x"].stride() == inputs["x"].stride()
    for name in want["grads"]:
        assert_close_to_max(got["grads"][name], want["grads"][name], 1e-10, name)
    for name in ("running_mean", "running_var"):
        assert_close_to_max(got[name], want[name], 1e-10, name)


def test_timesteps_needs_one_timestep_of_x():
    x = torch.randn(2, 3, 4, 5)
    with pytest.raises(ValueError, match="one timestep"):
        M.tdbn_plif(x, torch.ones(4), torch.zeros(4), torch.tensor(-1.0), timesteps=4)
    with pytest.raises(ValueError, match="residual must have x's shape \\[4, 3, 4, 5\\]"):
        M.tdbn_plif(x[:1], torch.ones(4), torch.zeros(4), torch.tensor(-1.0), timesteps=4,
                    residual=torch.randn(1, 3, 4, 5))


def test_launch_plans_follow_the_launch_parameters(monkeypatch):
    """Plans are memoized, but keyed by the module's launch parameters: changing one (as
    bench.tune does) changes the next launch, and restoring it restores the plan."""
    from mpdagl_triton.kernels import tdbn_plif as K

    layout = K.Layout.of(torch.empty(2, 8, 4, 16, 16))
    default = K.plan("forward", layout, 2, 8)
    assert K.plan("forward", layout, 2, 8) is default  # memoized
    monkeypatch.setattr(K, "FORWARD_TILE", 64)
    small = K.plan("forward", layout, 2, 8)
    assert small.block_r * small.block_k == 64 < default.block_r * default.block_k
    assert small.grid[0] == 32 and default.grid[0] == 1  # 8 rows x 4 column blocks vs one tile
    monkeypatch.undo()
    assert K.plan("forward", layout, 2, 8) == default
