"""A network of your own: registered, trained by the trainer, analysed, loaded and pushed like the zoo's."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import mpdagl_triton as M
from mpdagl_triton import cli, models
from mpdagl_triton.errors import InvalidInput
from mpdagl_triton.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from examples import deep_plain_snn  # noqa: E402  (registers "deep-plain")


def test_register_refuses_what_would_surprise():
    class Body(nn.Module):
        def __init__(self, num_classes, timesteps, **kwargs):
            super().__init__()
            self.head = nn.Linear(1, num_classes)

        def forward(self, x):
            return self.head(x.mean((1, 2, 3))[None, :, None].expand(2, -1, 1))

    with pytest.raises(InvalidInput, match="'resnet19' is an architecture of the zoo"):
        models.register("resnet19", Body)
    models.register("mean-pixel", Body)
    models.register("mean-pixel", Body)  # the same builder again: nothing happens
    with pytest.raises(InvalidInput, match="'mean-pixel' is already registered .* replace=True"):
        models.register("mean-pixel", lambda *a, **k: Body(*a, **k))
    assert models.create("mean-pixel", 3, T=2, in_channels=1, input_size=8)(torch.rand(5, 1, 8, 8)).shape == (5, 3)
    with pytest.raises(InvalidInput, match=r"the mean-pixel body returned \[2, 5, 3\]; .* \[T, B, classes\] = \[4, 5, 3\]"):
        models.create("mean-pixel", 3, T=4, in_channels=1, input_size=8)(torch.rand(5, 1, 8, 8))
    with pytest.raises(InvalidInput, match="unknown architecture 'nobody-made-me'.*import the module that registers it"):
        models.create("nobody-made-me", 10, T=2)


@pytest.mark.slow


def test_the_public_blocks_build_a_plain_network_and_each_rule_trains_it(tmp_path):
    """The example's small version: every width rule through train(), then analyze --compare."""
    depth = 2
    runs = deep_plain_snn.main(["--depth", str(depth), "--epochs", "3", "--timesteps", "2",
                                "--out", str(tmp_path / "plain")])
    assert [r.name for r in runs] == ["plain-mpdagl", "plain-lsg", "plain-fixed"]
    for run in runs:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[-1]["test_acc"] > 0.2  # chance: 0.1
        layers = [g["layer"] for g in rows[-1]["gradients"]]
        assert layers[0] == "body.stem.conv" and layers[-1] == "body.readout"
        assert len(layers) == 2 + depth
        assert all(g["mean_abs_grad"] > 0 and torch.isfinite(torch.tensor(g["mean_abs_grad"]))
                   for g in rows[-1]["gradients"])
        assert len(rows[-1]["layers"]) == 1 + depth  # the probe saw every neuron
    analysis = runs[0] / "analysis"
    summary = json.loads((analysis / "summary.json").read_text())
    assert {"grad_norms", "compare"} <= set(summary["files"])
    assert (analysis / "grad_norms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rules = {json.loads((r / "config.json").read_text())["neuron"]["width_rule"] for r in runs}
    assert rules == {"mpdagl", "lsg", "fixed"}
    # loaded like a zoo model (the module that registers it is imported: this test imported it)
    model = M.load(runs[1])
    assert model.arch == "deep-plain-2" and model(torch.rand(4, 1, 8, 8)).shape == (4, 10)
    assert cli.main(["train", "--out", str(runs[1]), "--resume", "--epochs", "4"]) == 0


@pytest.mark.slow


def test_gradient_magnitudes_are_the_mean_absolute_weight_gradients(tmp_path, monkeypatch):
    """What metrics.jsonl records: per conv/linear weight, mean |grad| averaged over the steps."""
    from mpdagl_triton import train as train_module

    seen = []
    real_step = torch.optim.SGD.step

    def record(optimizer, *args, **kwargs):
        seen.append({id(p): p.grad.abs().mean().item() for g in optimizer.param_groups for p in g["params"]
                     if p.grad is not None})
        return real_step(optimizer, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", record)
    result = train(TrainConfig(out=str(tmp_path / "run"), epochs=1, device="cpu"))
    model = M.load(tmp_path / "run")
    weights = {name: module.weight for name, module in model.named_modules()
               if isinstance(module, (nn.Conv2d, nn.Linear))}
    assert [g["layer"] for g in result["gradients"]] == list(weights)
    del train_module
    # the model's parameters are new objects; match them by position in the optimizer's order
    trained = models.create("tiny", 10, T=2, in_channels=1, input_size=8)
    order = [name for name, _ in trained.named_parameters()]
    for record_ in result["gradients"]:
        index = order.index(record_["layer"] + ".weight")
        expected = sum(list(step.values())[index] for step in seen) / len(seen)
        assert record_["mean_abs_grad"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.slow
def test_the_command_line_imports_the_module_that_registers_it(tmp_path):
    """`mpdagl train --arch deep-plain --import examples.deep_plain_snn`, from the repository root;
    `mpdagl eval` and `load` of the run need the import too, and say so without it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    train_cmd = [sys.executable, "-m", "mpdagl_triton.cli", "train", "--arch", "deep-plain", "--import",
                 "examples.deep_plain_snn", "--epochs", "1", "--out", str(out)]
    done = subprocess.run(train_cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "trainer_state.json").read_text())["config"]["imports"] == ["examples.deep_plain_snn"]
    evaluate = [sys.executable, "-m", "mpdagl_triton.cli", "eval", "--checkpoint", str(out)]
    refused = subprocess.run(evaluate, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2
    assert "unknown architecture 'deep-plain'" in refused.stderr and "--import MODULE" in refused.stderr
    assert refused.stderr.count("\n") == 1
    done = subprocess.run(evaluate + ["--import", "examples.deep_plain_snn"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "test accuracy" in done.stdout, done.stderr
    missing = subprocess.run(train_cmd[:7] + ["examples.nothing_here", "--out", str(tmp_path / "x")], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=600)
    assert missing.returncode == 2
    assert "--import examples.nothing_here: no module 'examples.nothing_here'" in missing.stderr


def test_normalized_batches_for_a_loop_of_your_own():
    from mpdagl_triton import data

    digits = data.load("digits")
    train_images, labels = next(digits.batches("train", 64, seed=1, epoch=1))
    test_images, _ = next(digits.batches("test", 64))
    raw = digits.test.images[:64].float() / 255
    mean = torch.tensor(digits.mean).view(1, -1, 1, 1)
    std = torch.tensor(digits.std).view(1, -1, 1, 1)
    assert torch.allclose(test_images, (raw - mean) / std)  # in order, normalized, unchanged
    assert train_images.shape == (64, 1, 8, 8) and labels.dtype == torch.int64
    again, _ = next(digits.batches("train", 64, seed=1, epoch=1))
    assert torch.equal(train_images, again)  # an epoch's batches depend on (seed, epoch) only
    with pytest.raises(InvalidInput, match="split must be 'train' or 'test'"):
        next(digits.batches("valid", 64))


@pytest.mark.slow


def test_a_registered_network_resumes_exactly(tmp_path, capsys):
    """Stopped after epoch 1 and resumed, a registered network ends bit-identical to an
    uninterrupted run; `mpdagl energy` reads its run like a zoo model's."""
    from mpdagl_triton.checkpoint import load_tensors

    models.register("plain-2", functools.partial(deep_plain_snn.DeepPlainSNN, depth=2, width=8))
    cfg = TrainConfig(arch="plain-2", epochs=2, device="cpu", out=str(tmp_path / "whole"))
    train(cfg)
    staged = dataclasses.replace(cfg, out=str(tmp_path / "staged"))
    train(staged, stop_after_epoch=1)
    train(staged, resume=True)
    whole, _ = load_tensors(tmp_path / "whole" / "model.safetensors")
    resumed, _ = load_tensors(tmp_path / "staged" / "model.safetensors")
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)
    rows = [[json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
            for run in ("whole", "staged")]
    timing = {"seconds", "images_per_s"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in rows[0]] == \
           [{k: v for k, v in r.items() if k not in timing} for r in rows[1]]
    assert cli.main(["energy", str(tmp_path / "whole")]) == 0
    assert "SNN / ANN energy" in capsys.readouterr().out
