"""Property-based: the op over random shapes, dtypes, T, widths and hostile values never crashes,
always writes every output element, and reports non-finite input when asked to."""

import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import mpdagl_triton as M
from mpdagl_triton import SURROGATES, WIDTH_RULES
from support.oracle import DEVICE

SPECIAL = [0.0, 1e-45, 1e-40, -1e-38, 1e30, -1e30, 65504.0, 3e38, math.inf, -math.inf, math.nan]


@st.composite
def hostile_case(draw):
    T, B, C = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    spatial = tuple(draw(st.lists(st.integers(1, 5), max_size=2)))
    shape = (T, B, C) + spatial
    assume(math.prod(shape) // C >= 2)  # training needs two values per channel
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-30, 1e-3, 1.0, 1e3, 1e20]))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    n_special = draw(st.integers(0, 3))
    for _ in range(n_special):
        index = tuple(draw(st.integers(0, n - 1)) for n in shape)
        x[index] = draw(st.sampled_from(SPECIAL))
    rule = draw(st.sampled_from(WIDTH_RULES))
    options = dict(surrogate=draw(st.sampled_from(SURROGATES)), width_rule=rule,
                   kappa0=draw(st.sampled_from([1e-6, 0.5, 1.0, 1e6])) if rule == "fixed" else None,
                   learn_tau=draw(st.booleans()), training=draw(st.booleans()))
    return x.to(dtype), options


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=hostile_case(), backend=st.sampled_from(["triton", "torch"]))
@pytest.mark.slow
def test_hostile_inputs_never_crash(case, backend):
    x, options = case
    x = x.to(DEVICE)
    C = x.shape[2]
    gamma = torch.ones(C, device=DEVICE, requires_grad=True)
    beta = torch.zeros(C, device=DEVICE, requires_grad=True)
    rho = torch.tensor(-1.0, device=DEVICE, requires_grad=True)
    learn_tau = options.pop("learn_tau")
    xg = x.clone().requires_grad_()
    spikes = M.tdbn_plif(xg, gamma, beta, rho if learn_tau else None, tau=None if learn_tau else 0.2,
                         learn_tau=learn_tau, running_mean=torch.zeros(C, device=DEVICE),
                         running_var=torch.ones(C, device=DEVICE), backend=backend, **options)
    assert spikes.shape == x.shape and spikes.dtype == x.dtype
    assert ((spikes == 0) | (spikes == 1)).all()  # every element written, never NaN
    spikes.float().sum().backward()
    assert xg.grad.shape == x.shape and gamma.grad.shape == (C,)
    if not torch.isfinite(x).all():
        with pytest.raises(ValueError, match="x holds NaN or Inf"):
            M.tdbn_plif(x, gamma, beta, rho, running_mean=torch.zeros(C, device=DEVICE),
                        running_var=torch.ones(C, device=DEVICE), backend=backend, check_finite=True,
                        **options)
