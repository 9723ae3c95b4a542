"""Eager launches skip Triton's per-launch specialization (``kernels.tdbn_plif._DirectLauncher``)
and still hand its launcher exactly what Triton's own ``kernel[grid](...)`` would."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mpdagl_triton as M

TESTS = Path(__file__).resolve().parent


@pytest.mark.slow
def test_direct_launches_equal_tritons_own():
    """Kernels compiled for sm_90, launchers recorded (tests/support/direct_launch.py): every launch from
    the cache matches Triton's for the same arguments (variant, grid, stream, every argument),
    across sizes, alignment, dtypes, layouts and options; repeated layers come from the cache."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET",)}
    done = subprocess.run([sys.executable, str(TESTS / "support" / "direct_launch.py")], env=env, cwd=TESTS.parent,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["mismatches"] == []
    # each of the 13 cases runs twice: its second run launches only from the cache
    assert result["direct"] >= 13 * 4 and result["compiled"] >= 13
    # every direct launch was launched a second time through Triton, for the comparison
    assert result["launches"] == result["compiled"] + 2 * result["direct"]


def test_only_kernels_triton_compiles_launch_directly():
    from mpdagl_triton.kernels import tdbn_plif as K

    if isinstance(K._forward_kernel, K.triton.runtime.JITFunction):  # compiled by Triton: on a GPU
        assert isinstance(K._direct(K._forward_kernel), K._DirectLauncher) == K.DIRECT_LAUNCH
    else:  # Triton's interpreter
        assert K._direct(K._forward_kernel) is K._forward_kernel
    stand_in = object()
    assert K._direct(stand_in) is stand_in


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="direct launches need kernels compiled for a CUDA device")
@pytest.mark.parametrize("channels_last", [False, True])
def test_layers_launched_from_the_cache_equal_the_reference(channels_last):
    """On CUDA, float64: a layer's second call with fresh inputs of the same shape launches every
    kernel from the direct launchers' cache (no new variant) and still gives the reference's
    spikes, gradients and running statistics; so does an x 8 bytes off 16-byte alignment, called
    twice."""
    from mpdagl_triton.kernels import tdbn_plif as K
    from support.oracle import Case, assert_close_to_max, check_float64

    def variants() -> int:
        return sum(len(launcher.variants) for launcher in K._DIRECT_LAUNCHERS.values())

    case = Case((3, 4, 5, 6, 7), channels_last=channels_last, residual=True)
    check_float64(case)
    cached = variants()
    check_float64(Case(case.shape, channels_last=channels_last, residual=True, seed=1))
    assert cached > 0 and variants() == cached

    # x 8 bytes off 16-byte alignment: other variants of the kernels that read x
    x = torch.randn(1 + 3 * 4 * 5 * 6 * 7, dtype=torch.float64, device="cuda")[1:].view(3, 4, 5, 6, 7)
    assert x.data_ptr() % 16 == 8
    x.requires_grad_(True)
    gamma = (torch.rand(5, dtype=torch.float64, device="cuda") + 0.5).requires_grad_(True)
    beta = torch.zeros(5, dtype=torch.float64, device="cuda", requires_grad=True)
    rho = torch.tensor(-0.8, dtype=torch.float64, device="cuda", requires_grad=True)
    grad = torch.randn(x.shape, dtype=torch.float64, device="cuda")
    for call in range(2):  # the first call may compile variants for it, the second launches from the cache
        if call == 1:
            cached = variants()
        results = {}
        for backend in ("triton", "torch"):
            spikes = M.tdbn_plif(x, gamma, beta, rho, backend=backend)
            results[backend] = (spikes, *torch.autograd.grad(spikes, (x, gamma, beta, rho), grad))
        assert torch.equal(results["triton"][0], results["torch"][0])
        for name, got, want in zip(("dx", "dgamma", "dbeta", "drho"), results["triton"][1:],
                                   results["torch"][1:]):
            assert_close_to_max(got, want, 1e-10, name)
    assert variants() == cached


def test_eager_calls_launch_on_the_device_of_their_input(monkeypatch):
    """Triton launches on the current CUDA device: an eager call whose x lives on another device
    makes x's current for the call (checked with a stand-in x on cuda:1; one GPU cannot show it)."""
    import contextlib

    from mpdagl_triton import ops

    class OnSecondGpu:
        is_cuda = True
        device = torch.device("cuda", 1)

    entered = []
    monkeypatch.setattr(torch.cuda, "device", lambda device: entered.append(device) or contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    ops._on_device_of(OnSecondGpu())
    assert entered == [torch.device("cuda", 1)]
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    ops._on_device_of(OnSecondGpu())
    ops._on_device_of(torch.zeros(1))
    assert entered == [torch.device("cuda", 1)]  # already current, or not on CUDA: no switch
