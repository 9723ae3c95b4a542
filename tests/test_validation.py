"""Bad input gets a ValueError/TypeError that names the argument, never a wrong answer."""

import subprocess
import sys

import pytest
import torch

import mpdagl_triton as M
from mpdagl_triton import TdBNPLIF, ops


def good():
    return dict(x=torch.randn(2, 3, 4, 5), gamma=torch.ones(4), beta=torch.zeros(4),
                rho=torch.tensor(-1.0))


def call(backend="torch", **changes):
    args = good()
    args.update({k: v for k, v in changes.items() if k in args})
    kwargs = {k: v for k, v in changes.items() if k not in args}
    return M.tdbn_plif(args["x"], args["gamma"], args["beta"], args["rho"], backend=backend, **kwargs)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize(
    "changes,error,match",
    [
        (dict(x=torch.randn(3, 4)), ValueError, r"x must have shape \[T, B, C, \*S\]"),
        (dict(x=torch.randn(0, 3, 4)), ValueError, "T = 0"),
        (dict(x=torch.randn(2, 0, 4)), ValueError, "B = 0"),
        (dict(x=torch.ones(2, 3, 4, 5, dtype=torch.int64)), TypeError, "x must be float16"),
        (dict(gamma=torch.ones(3)), ValueError, r"gamma must have shape \[C\] = \[4\]"),
        (dict(beta=torch.zeros(5)), ValueError, "beta must have shape"),
        (dict(rho=torch.tensor([-1.0])), ValueError, "rho must be a 0-d tensor"),
        (dict(rho=-1.0), TypeError, "rho must be a torch.Tensor"),
        (dict(rho=None), TypeError, "rho is None: a learnable decay needs rho .* pass learn_tau=False, tau="),
        (dict(residual=torch.randn(2, 3, 4, 6)), ValueError, "residual must have x's shape"),
        (dict(skip=torch.randn(2, 3, 4, 6)), ValueError, "skip must have x's shape"),
        (dict(skip=torch.ones(2, 3, 4, 5, dtype=torch.int64)), TypeError, "skip must be a floating"),
        (dict(skip=torch.ones(2, 3, 4, 5, device="meta")), ValueError, "skip is on meta"),
        (dict(gamma=torch.ones(4, device="meta")), ValueError, "gamma is on meta"),
        (dict(surrogate="gauss"), ValueError, "unknown surrogate 'gauss'"),
        (dict(width_rule="auto"), ValueError, "unknown width_rule 'auto'"),
        (dict(vth=0.0), ValueError, "vth must be a positive"),
        (dict(vth=-0.5), ValueError, "vth must be a positive"),
        (dict(kappa0=0.0, width_rule="fixed"), ValueError, "kappa0 must be a positive"),
        (dict(kappa0=0.5), ValueError, "kappa0=0.5 sets the width of width_rule='fixed' only"),
        (dict(tau=0.3), ValueError, "tau=0.3 is the decay of learn_tau=False"),
        (dict(training=False), ValueError, "needs running_mean and running_var"),
        (dict(running_mean=torch.zeros(4)), ValueError, "together"),
        (dict(x=torch.randn(1, 1, 4)), ValueError, "more than one value per channel"),
        (dict(learn_tau=False, tau=None), TypeError, "tau must be a number"),
        (dict(learn_tau=False, tau=1.5), ValueError, r"tau must lie in \[0, 1\]"),
    ],
)
def test_bad_input(backend, changes, error, match):
    with pytest.raises(error, match=match):
        call(backend, **changes)


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        call("cuda")


def test_layer_constructor_errors():
    with pytest.raises(ValueError, match="unknown surrogate"):
        TdBNPLIF(4, surrogate="step")
    with pytest.raises(ValueError, match="vth must be positive"):
        TdBNPLIF(4, vth=0)
    with pytest.raises(ValueError, match="kappa0 must be a positive"):
        TdBNPLIF(4, width_rule="fixed", kappa0=-1)
    for rule in ("mpdagl", "lsg"):  # an option that would do nothing
        with pytest.raises(ValueError, match=f"width_rule='{rule}' computes its own"):
            TdBNPLIF(4, width_rule=rule, kappa0=0.5)
        with pytest.raises(ValueError, match=f"width_rule='{rule}' computes its own"):
            M.PLIF(width_rule=rule, kappa0=0.5)
    assert TdBNPLIF(4, width_rule="fixed").kappa0 == 1.0
    with pytest.raises(ValueError, match="strictly in"):
        TdBNPLIF(4, tau=1.0)
    with pytest.raises(ValueError, match="channels must be >= 1"):
        TdBNPLIF(0)
    with pytest.raises(ValueError, match="unknown backend 'gpu'; expected one of auto, triton, torch"):
        TdBNPLIF(4, backend="gpu")


def test_layers_name_a_channel_count_that_is_not_theirs():
    for layer in (TdBNPLIF(4), M.TdBN(4)):
        with pytest.raises(ValueError, match=r"x has 5 channels \(dim 2 of \[T, B, C, \*S\]\); this layer was built for 4"):
            layer(torch.rand(2, 3, 5, 6, 6))
    with pytest.raises(ValueError, match=r"gamma must have shape \[C\] = \[5\] \(C: dim 2 of x\)"):
        M.tdbn_plif(torch.rand(2, 3, 5, 6, 6), torch.ones(4), torch.zeros(4), torch.tensor(-1.0))


def test_backend_resolution(monkeypatch):
    cpu = torch.device("cpu")
    assert M.resolve_backend("auto", cpu) == "torch"  # auto = reference on CPU
    assert M.resolve_backend("torch", cpu) == "torch"
    if torch.cuda.is_available():
        assert M.resolve_backend("auto", torch.device("cuda")) == "triton"
    else:  # the interpreter is on in tests without CUDA
        assert M.resolve_backend("triton", cpu) == "triton"
        monkeypatch.setenv("MPDAGL_BACKEND", "triton")
        assert M.resolve_backend("auto", cpu) == "triton"
    monkeypatch.setenv("MPDAGL_BACKEND", "triton")
    assert M.resolve_backend("torch", cpu) == "torch"  # an explicit argument wins
    monkeypatch.setenv("MPDAGL_BACKEND", "fast")
    with pytest.raises(ValueError, match="unknown MPDAGL_BACKEND 'fast'"):
        M.resolve_backend("auto", cpu)


def test_an_interpreter_that_cannot_run_the_kernels_is_named(monkeypatch):
    """Triton < 3.7's interpreter with NumPy >= 2.4 fails inside every statistics kernel (seen with
    triton 3.6.0 and numpy 2.4.0 / 2.4.6; 2.3.5 and triton 3.7 work): say so before launching."""
    problem = ops.interpreter_incompatibility("3.6.0", "2.4.0")
    assert "Triton 3.6.0's CPU interpreter" in problem and "triton>=3.7 or numpy<2.4" in problem
    for triton_version, numpy_version in [("3.7.0", "2.4.6"), ("3.6.0", "2.3.5"), ("3.10.1", "2.4.0"),
                                          ("3.2.0+git1a2b", "1.26.4")]:
        assert ops.interpreter_incompatibility(triton_version, numpy_version) is None
    cpu = torch.device("cpu")
    monkeypatch.setattr(ops, "_INTERPRETER_PROBLEM", problem)
    assert M.resolve_backend("auto", cpu) == "torch"  # the reference needs no interpreter
    if not torch.cuda.is_available():  # the interpreter is on in tests without CUDA
        with pytest.raises(RuntimeError, match=r"Triton 3\.6\.0's CPU interpreter"):
            M.resolve_backend("triton", cpu)


def test_env_backend_selects_triton(monkeypatch):
    """MPDAGL_BACKEND=triton routes auto through the fused op (visible in the autograd graph)."""
    from support.oracle import DEVICE

    x = torch.randn(2, 3, 4, 5, device=DEVICE, requires_grad=True)
    on = dict(gamma=torch.ones(4, device=DEVICE), beta=torch.zeros(4, device=DEVICE),
              rho=torch.tensor(-1.0, device=DEVICE))
    monkeypatch.setenv("MPDAGL_BACKEND", "triton")
    spikes = call("auto", x=x, **on)
    assert "EagerTdBNPLIF" in spikes.grad_fn.name()
    monkeypatch.setenv("MPDAGL_BACKEND", "torch")
    assert "TdBNPLIF" not in call("auto", x=x, **on).grad_fn.name()


@pytest.mark.skipif(torch.cuda.is_available(), reason="about machines without CUDA")
@pytest.mark.slow
def test_explicit_triton_without_cuda_or_interpreter_raises():
    code = (
        "import os, torch, mpdagl_triton as M\n"
        "os.environ.pop('TRITON_INTERPRET', None)\n"
        "try:\n"
        "    M.tdbn_plif(torch.randn(2, 3, 4), torch.ones(4), torch.zeros(4), torch.tensor(0.), backend='triton')\n"
        "except RuntimeError as e:\n"
        "    print('ERR', e)\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "ERR backend='triton' cannot run on a cpu tensor" in out.stdout, out.stderr
