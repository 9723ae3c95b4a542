"""Deploying a trained model: the inference path, NIR export read back by us and by SpikingJelly,
torch.export and AOTInductor packages, and `mpdagl export`'s refusals."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mpdagl_triton import cli, layers, models, ops, reference
from mpdagl_triton.errors import InvalidInput, Unavailable
from mpdagl_triton.export import export_program, from_nir, to_nir, write_nir
from mpdagl_triton.layers import TdBNPLIF

nir = pytest.importorskip("nir") if not os.environ.get("CI") else __import__("nir")

#: (arch, in_channels, input size): small inputs, every zoo architecture
ZOO = [("tiny", 1, 8), ("resnet19", 3, 8), ("resnet18", 3, 8), ("vggsnn", 2, 16), ("vgg13", 3, 32)]


def random_model(arch: str, in_channels: int, size: int, dtype=torch.float64, seed: int = 0):
    """A zoo model in eval mode with random tdBN statistics, scales, shifts and decays (so the
    fold is not the identity), in ``dtype``."""
    net = models.create(arch, 10, 2, in_channels=in_channels, input_size=size).to(dtype).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, n in net.neurons():
            C = n.channels
            n.gamma.copy_(torch.rand(C, generator=g) + 0.5)
            n.beta.copy_(torch.randn(C, generator=g) * 0.3)
            n.running_mean.copy_(torch.randn(C, generator=g) * 0.2)
            n.running_var.copy_(torch.rand(C, generator=g) + 0.5)
            n.rho.fill_(float(torch.randn((), generator=g)) * 0.5 - 1.0)
    return net


def images(model, batch: int = 3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    return torch.rand(batch, model.in_channels, model.input_size, model.input_size, generator=g).to(dtype)


@contextlib.contextmanager
def recorded_spikes(model):
    """Each neuron's own spikes (without a ResNet shortcut) by NIR node name, whichever path runs,
    and with the op's eval route its membrane margins |V - Vth| in float64."""
    spikes, margins = {}, {}
    names = {module: name.removeprefix("body.") for name, module in model.neurons()}
    fire = TdBNPLIF.fire

    def recording_fire(self, y, skip=None, timesteps=None):
        out = fire(self, y, skip, timesteps)
        spikes[names[self]] = out if skip is None else out - skip
        return out

    def hook(module, args, kwargs, out):
        x, skip = args[0], kwargs.get("skip", args[2] if len(args) > 2 else None)
        spikes[names[module]] = (out if skip is None else out - skip).detach()
        steps = kwargs.get("timesteps") or x.shape[0]
        y = reference.tdbn(x.double().expand(steps, *x.shape[1:]), module.gamma.double(), module.beta.double(),
                           running_mean=module.running_mean.double(), running_var=module.running_var.double(),
                           training=False, vth=module.vth, alpha=module.alpha)
        tau, v, s, margin = module.decay(torch.float64), torch.zeros_like(y[0]), torch.zeros_like(y[0]), []
        for t in range(steps):
            v = tau * v * (1 - s) + y[t]
            s = (v >= module.vth).double()
            margin.append((v - module.vth).abs())
        margins[names[module]] = torch.stack(margin).detach()

    hooks = [m.register_forward_hook(hook, with_kwargs=True) for m in names]
    TdBNPLIF.fire = recording_fire
    try:
        yield spikes, margins
    finally:
        TdBNPLIF.fire = fire
        for h in hooks:
            h.remove()


# ----------------------------------------------------------------------------------------------
# The inference path
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["fold", "affine"])
@pytest.mark.parametrize("arch,channels,size", ZOO)
def test_inference_path_gives_the_spikes_of_the_eval_forward(arch, channels, size, path, monkeypatch):
    """Eval mode without gradients folds tdBN into the convolution (or scales and shifts per
    channel) and runs a forward-only LIF: every layer's spikes equal the op's eval route (running
    statistics) exactly, in float64 on random statistics, and nothing is kept for a backward."""
    monkeypatch.setattr(layers, "INFERENCE_PATH", path)
    net = random_model(arch, channels, size)
    x = images(net)
    with recorded_spikes(net) as (expected, _):
        reference_logits = net(x)  # gradients on: the op's eval route
    with recorded_spikes(net) as (fast, _), torch.no_grad():
        logits = net(x)
    assert set(fast) == set(expected) == {name.removeprefix("body.") for name, _ in net.neurons()}
    for name in expected:
        assert torch.equal(fast[name], expected[name]), name
        assert 0 < float(expected[name].mean()) < 1, name  # the comparison sees spikes and silence
    assert torch.equal(logits, reference_logits.detach())
    assert logits.grad_fn is None


def test_folded_weights_follow_the_parameters():
    """The fold is kept between calls until a tensor it came from changes in place (an optimizer
    step, load_state_dict)."""
    net = random_model("tiny", 1, 8)
    x = images(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(2):
        with torch.no_grad():
            fast = net(x)
        assert torch.equal(fast, net(x).detach())
        net.train()
        net(x).sum().backward()
        optimizer.step()
        net.eval()
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in net.state_dict().items()}
    net.load_state_dict(state)
    with torch.no_grad():
        fast = net(x)
    assert torch.equal(fast, net(x).detach())


def test_inference_path_is_taken_only_in_eval_without_gradients():
    net = random_model("tiny", 1, 8, dtype=torch.float32)
    x = images(net)
    layer = next(n for _, n in net.neurons())
    with torch.no_grad():
        assert layer.inference(x)
        net.train()
        assert not layer.inference(x)
    net.eval()
    assert not layer.inference(x)  # gradients on: the op, with its surrogate gradients
    with torch.inference_mode():
        assert layer.inference(x)


# ----------------------------------------------------------------------------------------------
# NIR: ours -> NIR -> ours
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("arch,channels,size", ZOO)
@pytest.mark.slow
def test_nir_round_trip_is_exact(arch, channels, size, dtype, tmp_path):
    """to_nir (-> .nir file) -> from_nir runs the same spikes and logits, bit for bit, as the
    model's inference path."""
    net = random_model(arch, channels, size, dtype)
    x = images(net)
    if dtype == torch.float32:  # through a file (HDF5)
        back = from_nir(write_nir(net, tmp_path / "model.nir"), dtype=dtype)
    else:
        back = from_nir(to_nir(net), dtype=dtype)
    with recorded_spikes(net) as (expected, _), torch.no_grad():
        logits = net(x)
        steps = net(x, return_timesteps=True)
    with torch.no_grad():
        assert torch.equal(back(x), logits)
        assert torch.equal(back(x, return_timesteps=True), steps)
    assert set(back.spikes) == set(expected)
    for name, spikes in expected.items():
        assert torch.equal(back.spikes[name], spikes), name


def test_nir_round_trip_with_event_frames():
    """Event frames [B, T, C, H, W]: frame t is the input at step t, in the graph as in the model."""
    net = random_model("vggsnn", 2, 16)
    frames = torch.rand(3, net.timesteps, 2, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(from_nir(to_nir(net), dtype=torch.float64)(frames), net(frames))


def test_nir_graph_holds_the_model():
    net = random_model("resnet19", 3, 8, torch.float32)
    net.label_names = [f"c{i}" for i in range(10)]
    net.normalization = {"mean": [0.5] * 3, "std": [0.25] * 3}
    graph = to_nir(net)
    meta = graph.metadata
    assert meta["timesteps"] == 2 and meta["arch"] == "resnet19" and "mean over T" in meta["readout"]
    assert json.loads(meta["classes"]) == net.label_names
    assert json.loads(meta["normalization"]) == net.normalization
    assert "normalized image [C, H, W] at every one of the T steps" in meta["encoding"] and "V >= v_threshold" in meta["threshold"]
    kinds = {type(n).__name__ for n in graph.nodes.values()}
    assert kinds == {"Input", "Conv2d", "LIF", "AvgPool2d", "Flatten", "Affine", "Linear", "Output"}
    # the discretisation: one Euler step of dt is V_t = tau V_{t-1} + y_t
    lif, neuron = graph.nodes["stem.neuron"], net.body.stem.neuron
    decay, dt = float(neuron.decay()), meta["dt"]
    assert lif.tau.shape == (128, 8, 8)
    assert 1 - dt / lif.tau.flat[0] == pytest.approx(decay, rel=1e-12)
    assert lif.r.flat[0] * dt / lif.tau.flat[0] == pytest.approx(1.0, rel=1e-12)
    assert lif.v_leak.max() == lif.v_reset.max() == 0 and lif.v_threshold.flat[0] == neuron.vth
    # the folded stem: conv(x) * scale + shift
    x = images(net)
    w, b = torch.from_numpy(graph.nodes["stem.conv"].weight), torch.from_numpy(graph.nodes["stem.conv"].bias)
    scale, shift = neuron.affine(torch.float64)
    plain = net.body.stem.conv(x).double()
    folded = torch.nn.functional.conv2d(x, w, b, padding=1).double()
    torch.testing.assert_close(folded, plain * scale.view(-1, 1, 1) + shift.view(-1, 1, 1), rtol=1e-5, atol=1e-5)
    # residual edges: an identity shortcut feeds the next block with the block's own spikes
    into = {(s, t) for s, t in graph.edges}
    assert ("stem.neuron", "stages.1.branch1.conv") in into and ("stages.0.branch2.neuron", "stages.1.branch1.conv") in into
    assert ("stages.3.shortcut.neuron", "stages.4.branch1.conv") in into


# ----------------------------------------------------------------------------------------------
# A peer runs the graph: SpikingJelly
# ----------------------------------------------------------------------------------------------


def spikingjelly():
    """SpikingJelly's NIR import; installed in CI (`.ci/run`), optional elsewhere."""
    if os.environ.get("CI"):
        from spikingjelly.activation_based.nir_exchange import import_from_nir
    else:
        import_from_nir = pytest.importorskip("spikingjelly.activation_based.nir_exchange").import_from_nir
    return import_from_nir


def run_spikingjelly(graph, x: torch.Tensor, timesteps: int, dtype: torch.dtype):
    """The per-step output ``[T, B, classes]`` and each LIF node's spikes, by node name."""
    net = spikingjelly()(graph, dt=graph.metadata["dt"], dtype=dtype, step_mode="m")
    spikes = {}
    for name, module in net.named_modules():
        if type(module).__name__ == "_NIRStatefulModule":  # its LIF nodes: (spikes, state) out
            module.register_forward_hook(lambda m, a, out, name=name: spikes.__setitem__(name, out[0]))
    with torch.no_grad():
        out, _ = net(x.unsqueeze(0).expand(timesteps, *x.shape).to(dtype))  # the image at every step
    return out, spikes


def compare_layers(ours: dict, margins: dict, theirs: dict, order: list[str],
                   within: float = 1e-9) -> tuple[int, int]:
    """Spikes layer by layer up to the first layer that differs, whose differences must all lie
    where our membrane potential (in float64) is ``within`` the threshold: rounding of float64
    (1e-9), or of float32 (1e-5). After it the layers' inputs differ. Returns (elements compared,
    elements differing)."""
    compared = differing = 0
    for name in order:
        mine, peer = ours[name], theirs[name.replace(".", "_")]
        assert mine.shape == peer.shape, name
        compared += mine.numel()
        wrong = mine != peer.to(mine.dtype)
        if wrong.any():
            differing += int(wrong.sum())
            assert bool((margins[name][wrong] < within).all()), f"{name}: a difference away from the threshold"
            break
    return compared, differing


@pytest.mark.parametrize("arch,channels,size", [("resnet19", 3, 8), ("vggsnn", 2, 16)])
def test_spikingjelly_runs_the_graph_with_our_spikes(arch, channels, size):
    """A random ResNet-19 and VGGSNN in float64: SpikingJelly's import of the NIR graph fires the
    spikes of our eval forward (running statistics, unfolded) in every layer, ties aside."""
    net = random_model(arch, channels, size, torch.float64, seed=3)
    x = images(net, batch=4)
    with recorded_spikes(net) as (ours, margins):
        expected = net(x, return_timesteps=True).detach()
    out, theirs = run_spikingjelly(to_nir(net), x, net.timesteps, torch.float64)
    order = [name.removeprefix("body.") for name, _ in net.neurons()]
    compared, differing = compare_layers(ours, margins, theirs, order)
    ties = sum(int((m < 1e-9).sum()) for m in margins.values())
    assert differing <= ties <= 1e-4 * compared, (differing, ties, compared)
    if differing == 0:
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# A trained model: `mpdagl export`, SpikingJelly on the digits test split, torch.export
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    from mpdagl_triton.train import TrainConfig, train

    out = tmp_path_factory.mktemp("digits") / "run"
    train(TrainConfig(out=str(out), epochs=3, device="cpu"))
    return out


def digits_test_split(model):
    from mpdagl_triton import data

    dataset = data.load("digits")
    loader = data.Loader(dataset.test, dataset, 512, torch.device("cpu"), train=False)
    batches = list(loader.epoch(0, 0))
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


@pytest.mark.slow


def test_digits_model_in_spikingjelly_predicts_as_mpdagl_eval(trained, tmp_path, capsys):
    """`mpdagl export --format nir`, imported by SpikingJelly in float32: the same spikes as
    `mpdagl eval`'s inference path (which fires as the op's eval route does) except at ties, the
    same class for every test image, logits within float32 rounding, the same accuracy."""
    from mpdagl_triton.hub import load

    out = tmp_path / "digits.nir"
    assert cli.main(["export", str(trained), "--format", "nir", "--out", str(out)]) == 0
    assert "mean over T" in capsys.readouterr().out
    assert cli.main(["eval", "--checkpoint", str(trained)]) == 0
    accuracy = float(capsys.readouterr().out.split("test accuracy ")[1].split(",")[0])
    model = load(trained)
    x, labels = digits_test_split(model)
    with recorded_spikes(model) as (folded, _), torch.no_grad():
        ours = model(x)  # what `mpdagl eval` computes: the inference path
    with recorded_spikes(model) as (unfolded, margins):
        model(x)  # the op's eval route, in float32 too
    order = [name.removeprefix("body.") for name, _ in model.neurons()]
    as_peer = {name.replace(".", "_"): spikes for name, spikes in unfolded.items()}
    compared, differing = compare_layers(folded, margins, as_peer, order, within=1e-5)
    assert differing <= 1e-5 * compared
    graph = nir.read(out)
    steps, spikes = run_spikingjelly(graph, x, model.timesteps, torch.float32)
    compared, differing = compare_layers(folded, margins, spikes, order, within=1e-5)
    assert differing <= 1e-5 * compared
    theirs = steps.mean(0)
    assert torch.equal(theirs.argmax(1), ours.argmax(1))
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    assert float((theirs.argmax(1) == labels).double().mean()) == pytest.approx(accuracy, abs=5e-5)


@pytest.mark.slow


def test_torch_export_of_a_trained_model(trained):
    """torch.export traces the inference path (no_grad) and the op's eval route (gradients on),
    with a dynamic batch; the programs give the model's logits."""
    from mpdagl_triton.hub import load

    model = load(trained)
    x, _ = digits_test_split(model)
    x = x[:7]
    program = export_program(model)
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(program.module()(x), expected)
        assert torch.equal(program.module()(x[:1]), model(x[:1]))  # another batch size
    with_grad = torch.export.export(model, (x,))
    assert torch.equal(with_grad.module()(x).detach(), expected)


def test_torch_export_traces_the_custom_op():
    """The fused op's fake implementation lets torch.export trace it without running a kernel:
    the exported graph calls mpdagl::tdbn_plif_fwd (what a CUDA model's layers call)."""

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.neuron = TdBNPLIF(4)

        def forward(self, x):
            n = self.neuron
            spikes, *_ = ops._fwd_op(x, n.gamma, n.beta, n.rho, None, None, n.running_mean, n.running_var,
                                     False, 0.0, n.eps, n.vth, n.alpha, "rect", "mpdagl", 1.0,
                                     False, x.shape[0])
            return spikes

    program = torch.export.export(Layer().eval(), (torch.randn(2, 3, 4, 5, 5),))
    targets = [str(node.target) for node in program.graph.nodes if node.op == "call_function"]
    assert "mpdagl.tdbn_plif_fwd.default" in targets


@pytest.mark.slow
def test_pt2_package_runs_in_a_fresh_process(trained, tmp_path, capsys):
    """`mpdagl export --format pt2` writes an AOTInductor package; a new process that imports
    mpdagl_triton loads it with torch._inductor.aoti_load_package and gets the same logits."""
    from mpdagl_triton.hub import load

    out = tmp_path / "digits.pt2"
    assert cli.main(["export", str(trained), "--format", "pt2", "--out", str(out)]) == 0
    assert "aoti_load_package" in capsys.readouterr().out
    model = load(trained)
    x, _ = digits_test_split(model)
    x = x[:9]
    save_file({"x": x.contiguous()}, tmp_path / "x.safetensors")
    script = ("import sys, torch, mpdagl_triton\n"
              "from safetensors.torch import load_file, save_file\n"
              "runner = torch._inductor.aoti_load_package(sys.argv[1])\n"
              "save_file({'y': runner(load_file(sys.argv[2])['x'])}, sys.argv[3])\n")
    subprocess.run([sys.executable, "-c", script, str(out), str(tmp_path / "x.safetensors"),
                    str(tmp_path / "y.safetensors")], check=True, timeout=300)
    with torch.no_grad():
        expected = model(x)
    got = load_file(tmp_path / "y.safetensors")["y"]
    assert torch.equal(got.argmax(1), expected.argmax(1))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_pt2_package_on_cuda_runs_our_kernels(trained, tmp_path):
    """On a GPU the exported graph calls the fused op's kernels, and the package loads after
    ``load_pt2`` registered the op."""
    from mpdagl_triton.export import load_pt2, write_pt2
    from mpdagl_triton.hub import load

    model = load(trained, device="cuda")
    x, _ = digits_test_split(model)
    x = x[:9].cuda()
    program = export_program(model)
    # the fused op, or (traced through its triton_op body) its kernels
    assert any("mpdagl" in str(node.target) or "triton_kernel" in str(node.target) for node in program.graph.nodes)
    runner = load_pt2(write_pt2(model, tmp_path / "digits.pt2"))
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(runner(x), expected, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# Refusals: one line, nothing written
# ----------------------------------------------------------------------------------------------


def test_training_mode_is_refused():
    net = random_model("tiny", 1, 8, torch.float32).train()
    with pytest.raises(InvalidInput, match="training mode.*running statistics.*model.eval"):
        to_nir(net)
    with pytest.raises(InvalidInput, match="training mode"):
        export_program(net)


def test_an_option_nir_cannot_hold_names_the_node():
    net = models.create("tiny", 10, 2, in_channels=1, input_size=8, learn_tau=False, tau=1.0).eval()
    with pytest.raises(InvalidInput, match=r"^stem\.neuron: tau = 1\.0 \(no leak\)"):
        to_nir(net)


def test_from_nir_refuses_nodes_it_does_not_read():
    graph = nir.NIRGraph.from_list(nir.Threshold(threshold=torch.zeros(3).numpy()))
    graph.metadata = {"timesteps": 2}
    with pytest.raises(InvalidInput, match="threshold: NIR node type Threshold"):
        from_nir(graph)


def run_cli(argv, capsys) -> tuple[int, str]:
    code = cli.main(argv)
    return code, capsys.readouterr().err


def test_export_command_refusals(trained, tmp_path, capsys, monkeypatch):
    missing = tmp_path / "no" / "such" / "folder" / "x.nir"
    code, err = run_cli(["export", str(trained), "--format", "nir", "--out", str(missing)], capsys)
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err and not missing.parent.exists()
    code, err = run_cli(["export", str(trained), "--format", "nir", "--out", str(tmp_path)], capsys)
    assert code == 2 and "is a folder" in err
    # nir missing: the install line
    monkeypatch.setitem(sys.modules, "nir", None)
    out = tmp_path / "x.nir"
    code, err = run_cli(["export", str(trained), "--format", "nir", "--out", str(out)], capsys)
    assert code == 1 and err.count("\n") == 1 and "pip install 'mpdagl-triton[nir]'" in err and not out.exists()
    with pytest.raises(Unavailable):
        to_nir(models.create("tiny", 10, 2, in_channels=1, input_size=8).eval())


def test_a_failed_write_leaves_nothing(trained, tmp_path, monkeypatch):
    from mpdagl_triton.hub import load

    out = tmp_path / "x.nir"
    out.write_bytes(b"the previous export")

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("mpdagl_triton.checkpoint.os.fsync", broken)
    with pytest.raises(InvalidInput, match="cannot write .*No space left"):
        write_nir(load(trained), out)
    assert out.read_bytes() == b"the previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["x.nir"]
