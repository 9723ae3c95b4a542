"""torch.library registration: opcheck, and torch.compile(fullgraph=True) equal to eager."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mpdagl_triton import TdBNPLIF, ops
from mpdagl_triton.ops import _bwd_op, _fwd_op
from support.oracle import DEVICE, to_channels_last

TESTS = Path(__file__).parent
# The triton_ops that compiled CUDA graphs call exist only where kernels can be traced: not under
# Triton's CPU interpreter. Their bodies are traced on a CPU by test_inductor_route_launches_*.
needs_traceable_kernels = pytest.mark.skipif(
    ops._fwd_inductor_op is None, reason="the inductor-launched ops need compiled Triton (a CUDA device)")


def _fwd_args(x, residual=None, running=False, skip=None, learn_tau=True, timesteps=None):
    C = x.shape[2]
    f64 = dict(dtype=torch.float64, device=DEVICE)
    gamma = torch.rand(C, **f64).add_(0.5).requires_grad_()
    beta = torch.randn(C, **f64).mul_(0.3).requires_grad_()
    rho = torch.tensor(-1.0, **f64, requires_grad=True) if learn_tau else None
    rm = torch.zeros(C, **f64) if running else None
    rv = torch.ones(C, **f64) if running else None
    return (x, gamma, beta, rho, residual, skip, rm, rv, not running, 0.0 if learn_tau else 0.3,
            1e-5, 0.5, 1.0, "rect", "mpdagl", 1.0, False, timesteps or x.shape[0])


def _fwd_variant(variant: str) -> tuple:
    """Forward op arguments: plain, with residual and skip, in eval mode, channels-last, with a
    fixed decay, or one channels-last timestep given at every step (with a residual and skip)."""
    x = torch.randn(3, 2, 4, 5, 5, dtype=torch.float64, device=DEVICE)
    if variant in ("channels_last", "one_step"):
        x = to_channels_last(x)
    residual, skip = ((torch.randn_like(x).requires_grad_(), torch.randn_like(x).requires_grad_())
                      if variant in ("residual", "one_step") else (None, None))
    if variant == "one_step":
        x = x[:1].clone()
    x.requires_grad_()
    return _fwd_args(x, residual, running=variant == "eval", skip=skip,
                     learn_tau=variant != "fixed_tau",
                     timesteps=3 if variant == "one_step" else None)


@pytest.mark.parametrize("variant", ["plain", "residual", "eval", "channels_last", "fixed_tau",
                                     "one_step"])
@pytest.mark.slow
def test_opcheck_forward(variant):
    torch.library.opcheck(_fwd_op, _fwd_variant(variant))


@pytest.mark.parametrize("batch_stats,learn_tau", [(True, True), (False, True), (True, False)])
@pytest.mark.slow
def test_opcheck_backward(batch_stats, learn_tau):
    x = torch.randn(3, 2, 4, 6, dtype=torch.float64, device=DEVICE)
    _, gamma, beta, rho, *_ = _fwd_args(x, learn_tau=learn_tau)
    residual = torch.randn_like(x)
    mean, var = x.mean(dim=(0, 1, 3)), x.var(dim=(0, 1, 3), unbiased=False)
    kappas = torch.tensor([1.1, 0.9], dtype=torch.float64, device=DEVICE)
    args = (torch.randn_like(x), x, gamma.detach(), beta.detach(),
            None if rho is None else rho.detach(), residual, mean, var, kappas,
            0.0 if learn_tau else 0.3, 1e-5, 0.5, 1.0, "atan", batch_stats, False)
    torch.library.opcheck(_bwd_op, args)
    # x of one timestep given at every step: dx is its total over T
    summed = (args[0], x[:1].clone(), *args[2:])
    torch.library.opcheck(_bwd_op, summed)


@needs_traceable_kernels
@pytest.mark.parametrize("variant", ["plain", "residual", "eval", "channels_last", "one_step"])
def test_opcheck_inductor_ops(variant):
    """The triton_ops used under torch.compile on CUDA: schema, autograd registration, fake
    tensors and static AOT dispatch (symbolic sizes: test_inductor_route_launches_*)."""
    args = _fwd_variant(variant)
    checks = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_static")
    torch.library.opcheck(ops._fwd_inductor_op, args, test_utils=checks)
    x, gamma, beta, rho, residual, *_ = args
    mean, var = x.detach().mean(dim=(0, 1, 3, 4)), x.detach().var(dim=(0, 1, 3, 4), unbiased=False)
    kappas = torch.tensor([1.1, 0.9], dtype=torch.float64, device=DEVICE)
    grad = torch.randn_like(x if residual is None else residual)  # one_step: x is one of T steps
    bwd_args = (grad, x.detach(), gamma.detach(), beta.detach(), rho.detach(),
                None if residual is None else residual.detach(), mean, var, kappas, 0.0, 1e-5, 0.5,
                1.0, "atan", variant != "eval", False)
    torch.library.opcheck(ops._bwd_inductor_op, bwd_args, test_utils=checks)


@pytest.mark.parametrize("channels_last,residual,broadcast,symbolic", [
    (False, False, False, False), (True, True, False, False), (True, False, True, False),
    (True, True, False, True)])
@pytest.mark.slow
def test_inductor_route_launches_our_kernels_and_writes_only_outputs(channels_last, residual, broadcast,
                                                                    symbolic):
    """What torch.compile on CUDA hands inductor for one layer's forward + backward, traced on
    this machine (meta tensors, kernels lowered for sm_90): the six launches of the training
    path, each writing only buffers the op allocated, and no opaque custom op left. An input
    broadcast over T reaches the kernels as its dense first timestep (its strides are baked into
    the launches, and inductor only promises a kernel argument's stride order, which a dense
    tensor pins down), never as a copy. Symbolic sizes
    (dynamic shapes) are specialized, not a failure: on an H200 they were, before Layout.of took
    them (a second input shape in one process failed to compile)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    flags = (["--channels-last"] * channels_last + ["--residual", "--skip"] * residual
             + ["--broadcast"] * broadcast + ["--symbolic"] * symbolic)
    done = subprocess.run([sys.executable, str(TESTS / "support" / "inductor_graph.py"), *flags], env=env,
                          cwd=TESTS.parent, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    graph = json.loads(done.stdout.splitlines()[-1])
    assert [launch["kernel"] for launch in graph["launches"]] == [
        "_stats_partial_kernel", "_stats_finalize_kernel", "_forward_kernel", "_backward_kernel",
        "_sum_partials_kernel", "_backward_kernel"]
    grads = sorted(["dx_ptr", "dgamma_ptr", "dbeta_ptr", "drho_ptr"] + ["dres_ptr"] * residual)
    assert [launch["writes"] for launch in graph["launches"]] == [
        ["partial_ptr"], ["mean_ptr", "var_ptr"], ["out_ptr", "widths_ptr"], ["partial_ptr"], ["out_ptr"], grads]
    assert not [op for op in graph["other_ops"] if "mpdagl" in op]
    # the decay, the surrogate widths, the parameter gradients and the total of the backward's
    # per-program sums come from the kernels: no computing op between them
    computing = [op for op in graph["other_ops"] if op.startswith("aten.") and op not in (
        "aten.empty.memory_format", "aten.empty_like.default", "aten.empty_strided.default",
        "aten.new_empty.default", "aten.select.int", "aten.copy.default", "aten.view.default")]
    assert computing == []
    assert "aten.copy.default" not in graph["other_ops"]


class TwoLayer(nn.Module):
    def __init__(self, backend):
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, padding=1, bias=False)
        self.neuron1 = TdBNPLIF(6, backend=backend)
        self.neuron2 = TdBNPLIF(6, backend=backend, width_rule="lsg", surrogate="sigmoid")

    def forward(self, x):  # x [T, B, 2, H, W]
        T, B = x.shape[:2]
        h = self.conv(x.flatten(0, 1)).unflatten(0, (T, B))
        s = self.neuron1(h)
        return self.neuron2(h, residual=s)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.slow
def test_compile_fullgraph_equals_eager(backend):
    torch.manual_seed(0)
    eager = TwoLayer(backend).double().to(DEVICE)
    compiled_model = TwoLayer(backend).double().to(DEVICE)
    compiled_model.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_model, fullgraph=True, backend="aot_eager")
    x = torch.randn(3, 2, 2, 6, 6, dtype=torch.float64, device=DEVICE) * 2
    grad = torch.randn(3, 2, 6, 6, 6, dtype=torch.float64, device=DEVICE)
    out_eager = eager(x)
    out_compiled = compiled(x)
    assert torch.equal(out_eager, out_compiled)
    out_eager.backward(grad)
    out_compiled.backward(grad)
    for (name, p1), (_, p2) in zip(eager.named_parameters(), compiled_model.named_parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-10, atol=1e-12, msg=name)
    for (name, b1), (_, b2) in zip(eager.named_buffers(), compiled_model.named_buffers()):
        torch.testing.assert_close(b1, b2, rtol=1e-12, atol=1e-12, msg=name)


def test_compile_options_launch_our_kernels_statically(monkeypatch):
    """compile_options: the mode's inductor options plus the static launcher for our kernels
    (unless ``static_launch=False``), accepted by torch.compile."""
    assert ops.compile_options() == {"static_launch_user_defined_triton_kernels": True}
    assert ops.compile_options("reduce-overhead") == {"triton.cudagraphs": True,
                                                      "static_launch_user_defined_triton_kernels": True}
    assert ops.compile_options("reduce-overhead", static_launch=False) == {"triton.cudagraphs": True}


def _compile_worker_setting() -> str:
    """static_launch_user_defined_triton_kernels as one of inductor's compile workers would see it:
    a new Python process started with the environment torch gives its workers."""
    from torch._inductor.utils import python_subprocess_env

    code = "import torch._inductor.config as c; print(c.static_launch_user_defined_triton_kernels)"
    done = subprocess.run([sys.executable, "-c", code], env=python_subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.slow
def test_compile_options_reach_inductors_compile_workers(monkeypatch):
    """The option decides in inductor's compile workers (other processes, handed only
    use_static_triton_launcher), so compile_options passes it on through the environment they
    start with; an explicit setting is kept, and workers already running get a warning."""
    import warnings

    monkeypatch.delenv(ops.STATIC_LAUNCH_ENV, raising=False)
    assert _compile_worker_setting() == "False"  # torch's default: Triton's launcher for ours
    monkeypatch.setattr(ops, "_compile_workers_running", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops.compile_options()
    assert _compile_worker_setting() == "True"

    monkeypatch.setenv(ops.STATIC_LAUNCH_ENV, "0")
    ops.compile_options()
    assert os.environ[ops.STATIC_LAUNCH_ENV] == "0"

    monkeypatch.delenv(ops.STATIC_LAUNCH_ENV)
    monkeypatch.setattr(ops, "_compile_workers_running", lambda: True)
    with pytest.warns(UserWarning, match="compile workers started before compile_options"):
        ops.compile_options("reduce-overhead")


def test_compile_workers_running_once_inductor_starts_its_pool():
    from torch._inductor.async_compile import AsyncCompile, get_compile_threads

    AsyncCompile.warm_pool()  # what inductor does first on a compile (no pool on one core)
    assert ops._compile_workers_running() == (get_compile_threads() > 1)


def test_compiled_kernel_launchers_counts_our_loaded_kernels(monkeypatch):
    """The launcher check reads inductor's loaded kernels: ours by kernel name, each counted once,
    static when every compiled variant is on the static launcher."""
    import types

    from torch._inductor.codecache import PyCodeCache
    from torch._inductor.runtime.triton_heuristics import (
        CachingAutotuner, StaticTritonCompileResult, TritonCompileResult)

    def kernel(name, *results):
        autotuner = object.__new__(CachingAutotuner)
        autotuner.fn = types.SimpleNamespace(__name__=name)
        autotuner.compile_results = [object.__new__(r) for r in results]
        return autotuner

    shared = kernel("_backward_kernel", TritonCompileResult)
    graph = types.ModuleType("graph")
    graph.__dict__.update(a=kernel("_forward_kernel", StaticTritonCompileResult), b=shared,
                          c=kernel("_stats_partial_kernel", StaticTritonCompileResult,
                                   TritonCompileResult),
                          d=kernel("triton_poi_fused_add_0", TritonCompileResult))
    other = types.ModuleType("other")
    other.__dict__.update(e=shared, f=kernel("_sum_partials_kernel", StaticTritonCompileResult))
    monkeypatch.setattr(PyCodeCache, "modules", [graph])
    monkeypatch.setattr(PyCodeCache, "modules_no_attr", {"k": other})
    assert ops.compiled_kernel_launchers() == {"static": 2, "triton": 2}
    monkeypatch.setattr(PyCodeCache, "modules", [])
    monkeypatch.setattr(PyCodeCache, "modules_no_attr", {})
    assert ops.compiled_kernel_launchers() == {}


@pytest.mark.slow
def test_compile_inductor_no_graph_breaks():
    """The inductor backend too, counting graphs: one forward graph means no break. With
    compile_options: on CUDA, inductor launches our kernels through its static launcher."""
    torch._dynamo.reset()
    torch.manual_seed(1)
    model = TwoLayer("triton").to(DEVICE)
    reference_model = TwoLayer("triton").to(DEVICE)
    reference_model.load_state_dict(model.state_dict())
    counters = torch._dynamo.utils.counters
    counters.clear()
    compiled = torch.compile(model, fullgraph=True, options=ops.compile_options())
    x = torch.randn(2, 2, 2, 5, 5, device=DEVICE)
    out = compiled(x)
    out.sum().backward()
    assert counters["stats"]["unique_graphs"] == 1
    expected = reference_model(x)
    expected.sum().backward()
    assert torch.equal(out, expected)
    for (name, p1), (_, p2) in zip(model.named_parameters(), reference_model.named_parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-5, atol=1e-6, msg=name)
    if DEVICE.type == "cuda":  # conftest gives compile workers the setting, as compile_options does
        assert ops.compiled_kernel_launchers().keys() == {"static"}


FORWARD_LAUNCHES = ["_stats_partial_kernel", "_stats_finalize_kernel", "_forward_kernel"]
BACKWARD_LAUNCHES = ["_backward_kernel", "_sum_partials_kernel", "_backward_kernel"]


def _dynamo_graphs(*args: str) -> list[list[str]]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, str(TESTS / "support" / "inductor_graph.py"), "--dynamo", *args], env=env,
                          cwd=TESTS.parent, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])["graphs"]


@pytest.mark.slow
def test_inductor_route_under_dynamic_shapes_compiles_one_graph_pair_per_shape():
    """torch.compile(dynamic=True) through AOTAutograd, two batch sizes in one process (what
    failed on an H200: the traced body got symbolic sizes): each shape gets its own
    forward and backward graph, launching the training path's kernels."""
    assert _dynamo_graphs("2", "3") == [FORWARD_LAUNCHES, BACKWARD_LAUNCHES] * 2


@pytest.mark.slow
def test_compiled_resnet19_launches_every_neuron_from_inductor_across_batch_sizes():
    """The whole channels-last ResNet-19 (stem broadcast over T, shortcuts added by the
    neurons) compiled as on CUDA, with a second batch size turning shapes dynamic: every one of
    its 20 neurons is launched from the graphs, forward and backward, at both sizes."""
    from mpdagl_triton import models

    neurons = sum(isinstance(m, TdBNPLIF) for m in models.create("resnet19", 10, 2).modules())
    assert neurons == 20
    assert _dynamo_graphs("4", "6", "--network", "resnet19") == [
        FORWARD_LAUNCHES * neurons, BACKWARD_LAUNCHES * neurons] * 2
