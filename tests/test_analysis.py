"""The paper's measurements: probe statistics, the energy estimate, figures and summary."""

import json
import math

import pytest
import torch
from PIL import Image

from mpdagl_triton import analysis, cli, models
from mpdagl_triton.train import TrainConfig, train


def test_energy_reproduces_the_paper():
    # the paper's Table 2
    assert analysis.ann_energy(2285.35e6) * 1e3 == pytest.approx(10.51, abs=0.005)
    assert analysis.energy_from_counts(579.33e6, 7.08e6) * 1e3 == pytest.approx(0.55, abs=0.005)


def test_energy_formula_on_layers():
    synapses = [
        {"layer": "stem", "role": "encoding", "macs": 1000, "input_rate": 0.7},
        {"layer": "a", "role": "spiking", "macs": 4000, "input_rate": 0.1},
        {"layer": "b", "role": "spiking", "macs": 2000, "input_rate": 0.3},
        {"layer": "head", "role": "readout", "macs": 50, "input_rate": 0.2},
    ]
    e = analysis.energy(synapses, timesteps=4)
    assert e["adds"] == pytest.approx(0.1 * 4 * 4000 + 0.3 * 4 * 2000)
    assert e["mults"] == 4 * (1000 + 50)
    assert e["ann_macs"] == 7050
    assert e["snn_mj"] == pytest.approx((0.9 * e["adds"] + 4.6 * e["mults"]) * 1e-9)
    assert e["ratio"] == pytest.approx(e["snn_mj"] / (4.6 * 7050 * 1e-9))


def test_resnet19_iso_ann_macs():
    """The paper: the iso-ANN ResNet-19 costs 2285 M MACs at 32x32."""
    net = models.create("resnet19", 10, 2)
    probe = analysis.probe(net, torch.rand(2, 3, 32, 32))
    assert sum(s["macs"] for s in probe["synapses"]) / 1e6 == pytest.approx(2285.35, abs=0.5)
    roles = [s["role"] for s in probe["synapses"]]
    assert roles[0] == "encoding" and roles[-1] == "readout" and set(roles[1:-1]) == {"spiking"}


def test_probe_against_an_independent_computation():
    torch.manual_seed(0)
    net = models.create("tiny", 10, 3, in_channels=1, input_size=8)
    with torch.no_grad():
        for _, layer in net.neurons():
            layer.gamma.uniform_(0.5, 1.5)
            layer.beta.normal_(0, 0.2)
    net.eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    images = torch.rand(16, 1, 8, 8)
    inputs = {}
    def keep_input(name):  # the stem's input comes as one timestep with timesteps=T
        def hook(module, args, kwargs):
            x, steps = args[0].detach(), kwargs.get("timesteps")
            inputs[name] = x if steps is None else x.expand(steps, *x.shape[1:])
        return hook

    hooks = [m.register_forward_pre_hook(keep_input(n), with_kwargs=True) for n, m in net.neurons()]
    net.train()
    with torch.no_grad():
        net(images)
    for h in hooks:
        h.remove()
    net.load_state_dict(before)
    net.eval()
    result = analysis.probe(net, images)
    assert not net.training  # mode restored
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k  # running statistics untouched
    layer_by_name = dict(net.neurons())
    for row in result["layers"]:
        layer, x = layer_by_name[row["layer"]], inputs[row["layer"]].double()
        dims = [0, 1, 3, 4]
        xhat = (x - x.mean(dims, keepdim=True)) / torch.sqrt(x.var(dims, unbiased=False, keepdim=True) + 1e-5)
        y = layer.gamma.double().view(1, 1, -1, 1, 1) * 0.5 * xhat + layer.beta.double().view(1, 1, -1, 1, 1)
        tau = torch.sigmoid(layer.rho.double()).item()
        g = layer.gamma.double().mean().abs().item()
        k1, kr = 2 * g * 0.5, 2 * math.sqrt(1 + tau ** 2) * g * 0.5
        v, s, vs, ss = torch.zeros_like(y[0]), torch.zeros_like(y[0]), [], []
        for t in range(3):
            v = tau * v * (1 - s) + y[t]
            s = (v >= 0.5).double()
            vs.append(v)
            ss.append(s)
        assert row["firing_rate"] == pytest.approx(torch.stack(ss).mean().item(), abs=1e-4)
        assert row["grad_available_first"] == pytest.approx(((vs[0] - 0.5).abs() < k1 / 2).double().mean().item(), abs=1e-3)
        rest = torch.stack(vs[1:])
        assert row["grad_available_rest"] == pytest.approx(((rest - 0.5).abs() < kr / 2).double().mean().item(), abs=1e-3)
        assert row["gamma_bar"] == pytest.approx(layer.gamma.mean().item())
        assert row["v_rest_var"] == pytest.approx(rest.var(unbiased=False).item(), rel=1e-3)
        assert row["theorem2_rest_var"] == pytest.approx((1 + tau ** 2) * (layer.gamma.mean().item() * 0.5) ** 2, rel=1e-5)
        assert row["kappa_rest"] == pytest.approx(kr, rel=1e-5)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("analysis")
    train(TrainConfig(out=str(base / "mpdagl"), epochs=2))
    train(TrainConfig(out=str(base / "fixed"), epochs=2, width_rule="fixed"))
    return base / "mpdagl", base / "fixed"


@pytest.mark.slow
def test_analyze_writes_valid_figures_and_a_true_summary(two_runs, capsys):
    run, other = two_runs
    assert cli.main(["analyze", str(run), "--compare", str(other)]) == 0
    out = run / "analysis"
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["files"]) == {"gamma_beta", "firing_rate", "grad_available", "kappa", "theorems",
                                     "grad_norms", "compare"}
    for name in summary["files"].values():
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size[0] > 500 and image.size[1] > 300
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert summary["best_test_acc"] == max(r["test_acc"] for r in rows)
    for got, row in zip(summary["per_epoch"], rows):
        layers = row["layers"]
        for key in ("grad_available_first", "firing_rate"):
            assert got[key] == pytest.approx(sum(layer[key] for layer in layers) / len(layers))
    synapses, T = rows[-1]["synapses"], 2
    adds = sum(s["input_rate"] * T * s["macs"] for s in synapses[1:-1])
    assert summary["energy"]["adds"] == pytest.approx(adds)
    assert summary["compare"]["fixed"]["test_acc"] == json.loads((other / "metrics.jsonl").read_text().splitlines()[-1])["test_acc"]
    # the fixed rule keeps kappa at kappa0 = 1; mpdagl follows gamma and tau
    fixed_layers = json.loads((other / "metrics.jsonl").read_text().splitlines()[-1])["layers"]
    assert all(layer["kappa_first"] == 1.0 and layer["kappa_rest"] == 1.0 for layer in fixed_layers)


@pytest.mark.slow


def test_a_one_epoch_run_is_drawn(two_runs, tmp_path):
    """A line through a single epoch draws nothing: such a run's curves get markers. Counted in
    the axes (the legend, below them, shows the colour anyway)."""
    import numpy as np

    from mpdagl_triton.analysis import plot_compare, plot_gamma_beta

    run, _ = two_runs
    first = [json.loads((run / "metrics.jsonl").read_text().splitlines()[0])]
    plot_compare([("one epoch", first)], tmp_path / "compare.png")
    plot_gamma_beta(first, tmp_path / "gamma_beta.png")
    for name in ("compare.png", "gamma_beta.png"):
        with Image.open(tmp_path / name) as image:
            pixels = np.asarray(image.convert("RGB")).astype(int)
        axes = pixels[: int(0.85 * len(pixels))]
        blue = (np.abs(axes - np.array([31, 119, 180])).sum(-1) < 60).sum()  # tab10's first colour
        assert blue > 40, (name, blue)


@pytest.mark.slow


def test_energy_command(two_runs, capsys):
    run, _ = two_runs
    assert cli.main(["energy", str(run)]) == 0
    out = capsys.readouterr().out
    assert "#Add" in out and "mJ" in out and "SNN / ANN energy" in out


@pytest.mark.slow


def test_metrics_carry_the_probe_statistics(two_runs):
    run, _ = two_runs
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    keys = {"tau", "kappa_first", "kappa_rest", "gamma_bar", "beta_bar", "firing_rate",
            "grad_available_first", "grad_available_rest"}
    assert all(keys <= set(layer) for layer in row["layers"])
