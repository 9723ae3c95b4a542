"""`mpdagl train` / `mpdagl eval`: the default run, checkpoints, exact resume, bad input."""

import argparse
import dataclasses
import json
import math
import os
import re
from pathlib import Path

import pytest
import torch

import mpdagl_triton as M
from mpdagl_triton import cli, train as train_module
from mpdagl_triton.checkpoint import CheckpointError, atomic_write_bytes
from mpdagl_triton.runtime import resolve_device
from mpdagl_triton.train import TrainConfig, TrainingDiverged, train

TIMING = {"seconds", "images_per_s"}


def short(tmp_path, **changes) -> TrainConfig:
    # on the CPU, where the exact-resume guarantee holds, even on a machine with a GPU
    return dataclasses.replace(TrainConfig(out=str(tmp_path / "run"), epochs=3, device="cpu"), **changes)


def metrics(out) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.mark.slow
def test_default_command_reaches_96_percent(tmp_path, capsys):
    """The README's first command: no options but an output folder."""
    assert cli.main(["train", "--out", str(tmp_path / "digits")]) == 0
    printed = capsys.readouterr().out
    final = float(printed.split("final test accuracy ")[1].split()[0])
    assert final >= 0.96, printed
    assert f"checkpoint in {tmp_path / 'digits'}" in printed
    out = tmp_path / "digits"
    for name in ("config.json", "model.safetensors", "trainer_state.safetensors", "trainer_state.json"):
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, TrainConfig().epochs + 1))
    last = rows[-1]
    assert last["test_acc"] == pytest.approx(final, abs=1e-4)
    for key in ("train_loss", "train_acc", "test_loss", "lr", "seconds", "images_per_s"):
        assert math.isfinite(last[key]), key
    assert {row["layer"] for row in last["layers"]} == {"body.stem.neuron", "body.features.1.neuron"}
    for layer in last["layers"]:
        assert 0 < layer["firing_rate"] < 1 and 0 < layer["tau"] < 1
        assert layer["kappa_rest"] > layer["kappa_first"] > 0  # sqrt(1 + tau^2) > 1
    # eval re-evaluates the saved model to the same number
    assert cli.main(["eval", "--checkpoint", str(out)]) == 0
    assert f"test accuracy {final:.4f}" in capsys.readouterr().out


def test_train_options_are_the_config_fields():
    """``mpdagl train`` takes one option per TrainConfig field (dashes for underscores) and the
    run options, nothing else; every option the README names exists."""
    commands = argparse.ArgumentParser().add_subparsers()
    cli._train_parser(commands)
    taken = {option for action in commands.choices["train"]._actions for option in action.option_strings
             if option.startswith("--") and option != "--help"}
    fields = {f.metadata["flag"] or f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(TrainConfig)}
    negated = {f"--no-{f.name.replace('_', '-')}" for f in dataclasses.fields(TrainConfig)
               if f.type in ("bool", "bool | None")}
    assert taken == fields | negated | {f"--{name}" for name in cli.RUN_OPTIONS}
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*[a-z]", readme.split("## Several GPUs")[0]))
    train_section_options = named - {"--checkpoint", "--repo-id", "--compare", "--help", "--version",
                                     "--standalone", "--nproc_per_node", "--repo-type", "--local-dir",
                                     "--index-url"}
    assert train_section_options <= taken, train_section_options - taken


def test_eval_on_a_dataset_the_model_does_not_classify(tmp_path, capsys):
    from support.fake_data import fake_cifar

    train(short(tmp_path, epochs=1))
    cifar = fake_cifar(tmp_path / "cifar", n_train=4, n_test=4, classes=5)
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "run"), "--dataset", str(cifar)]) == 2
    assert (f"{cifar} has 5 classes of 3-channel images; {tmp_path / 'run'} classifies 10 classes of "
            "1-channel images") in capsys.readouterr().err


def test_eval_reads_the_dataset_where_the_run_did(tmp_path, capsys):
    """A run trained from a local copy (--data-path) is re-evaluated from it without repeating
    the option (before: eval went to the Hub for uoft-cs/cifar10)."""
    from support.fake_data import fake_cifar

    cifar = fake_cifar(tmp_path / "cifar", n_train=16, n_test=8)
    run = tmp_path / "run"
    assert cli.main(["train", "--dataset", "cifar10", "--data-path", str(cifar), "--arch", "tiny", "--epochs", "1",
                     "--batch-size", "8", "--device", "cpu", "--out", str(run)]) == 0
    capsys.readouterr()
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    for checkpoint in (run, run / "model.safetensors"):
        assert cli.main(["eval", "--checkpoint", str(checkpoint)]) == 0, capsys.readouterr().err
        assert f"cifar10 test accuracy {last['test_acc']:.4f}" in capsys.readouterr().out


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.slow
def test_a_resume_steps_the_optimizer_as_this_machine_does(tmp_path, monkeypatch, optimizer):
    """CUDA runs step a fused optimizer; a resume, maybe on another device, keeps its own choice
    and the checkpoint's hyperparameters and slots."""
    assert train_module.optimizer_implementation(torch.device("cuda")) == {"fused": True}
    assert train_module.optimizer_implementation(torch.device("cpu")) == {}
    monkeypatch.setattr(train_module, "optimizer_implementation", lambda device: {"fused": True})  # as on CUDA
    train(short(tmp_path, epochs=1, optimizer=optimizer))
    monkeypatch.undo()
    restored = []
    restore = train_module.restore

    def watch(tensors, state, model, opt, *args):
        restore(tensors, state, model, opt, *args)
        restored.append((state["optimizer"]["param_groups"][0]["fused"], opt.param_groups[0]["fused"],
                         next(iter(opt.state.values()))))

    monkeypatch.setattr(train_module, "restore", watch)
    result = train(short(tmp_path, epochs=2, optimizer=optimizer), resume=True)
    (saved_fused, fused, slots), = restored
    assert saved_fused is True and not fused and math.isfinite(result["train_loss"])
    assert set(slots) == ({"momentum_buffer"} if optimizer == "sgd" else {"step", "exp_avg", "exp_avg_sq"})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GradScaler and fused optimizers on CUDA")
def test_an_fp16_step_on_cuda_does_not_wait_for_the_gpu():
    """fp16 needs GradScaler, whose inf check reads a value back every step unless the optimizer
    takes it on the device (fused optimizers do): a training step must not sync."""
    cfg = TrainConfig(amp="fp16", device="cuda")
    model = M.models.create("tiny", 10, 2, in_channels=1, input_size=8).cuda()
    optimizer, _ = train_module.build_optimizer(cfg, model)
    scaler = torch.amp.GradScaler("cuda")
    images, labels = torch.rand(16, 1, 8, 8, device="cuda"), torch.randint(0, 10, (16,), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.float16):
            loss = train_module.loss_fn(cfg, model(images, return_timesteps=True), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    step()  # lazy initialisations (the scaler's, the optimizer's state) may sync once
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_load_gives_identical_logits(tmp_path):
    train(short(tmp_path, epochs=1))
    model = M.load(tmp_path / "run")
    assert not model.training
    state = train_module.load_checkpoint(tmp_path / "run")[0]
    twin = M.models.create("tiny", 10, 2, in_channels=1, input_size=8)
    twin.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    twin.eval()
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(model(x), twin(x))


@pytest.mark.parametrize("changes", [{}, {"optimizer": "adam", "lr": 1e-3, "loss": "tet", "neuron": "lif"},
                                     {"channels_last": True}])
@pytest.mark.slow
def test_resume_is_exact(tmp_path, changes):
    full = short(tmp_path / "full", **changes)
    train(full)
    staged = short(tmp_path / "staged", **changes)
    train(staged, stop_after_epoch=1)
    assert [r["epoch"] for r in metrics(tmp_path / "staged" / "run")] == [1]
    train(staged, resume=True, explicit=set())
    a = M.load(tmp_path / "full" / "run").state_dict()
    b = M.load(tmp_path / "staged" / "run").state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert metrics(tmp_path / "full" / "run") == metrics(tmp_path / "staged" / "run")


def test_channels_last_by_default_on_cuda_only(tmp_path):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert train_module.uses_channels_last(None, cuda) and not train_module.uses_channels_last(None, cpu)
    assert train_module.uses_channels_last(True, cpu) and not train_module.uses_channels_last(False, cuda)
    train(short(tmp_path, epochs=1))  # the run records what it used
    assert json.loads((tmp_path / "run" / "trainer_state.json").read_text())["config"]["channels_last"] is False


@pytest.mark.slow
def test_resume_is_exact_with_augmentation(tmp_path):
    """CIFAR's augmentation (crop, flip, AutoAugment) draws per image: a run stopped after epoch 1
    and resumed ends with the same weights and metrics as one that never stopped."""
    from support.fake_data import fake_cifar

    cifar = fake_cifar(tmp_path / "cifar", n_train=32, n_test=8)
    runs = {}
    for name in ("full", "staged"):
        cfg = short(tmp_path / name, dataset="cifar10", data_path=str(cifar), batch_size=8, epochs=2)
        if name == "staged":
            train(cfg, stop_after_epoch=1)
            train(cfg, resume=True, explicit=set())
        else:
            train(cfg)
        runs[name] = tmp_path / name / "run"
    a, b = (M.load(runs[name]).state_dict() for name in ("full", "staged"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert metrics(runs["full"]) == metrics(runs["staged"])


@pytest.mark.slow
def test_resume_drops_metrics_of_an_unfinished_epoch(tmp_path):
    cfg = short(tmp_path)
    train(cfg, stop_after_epoch=1)
    out = tmp_path / "run"
    with open(out / "metrics.jsonl", "a") as f:  # epoch 2 logged, then a crash before its checkpoint
        f.write(json.dumps({"epoch": 2, "test_acc": 0.0}) + "\n{\"epoch\": 3, \"te")
    train(cfg, resume=True, explicit=set())
    assert [r["epoch"] for r in metrics(out)] == [1, 2, 3]
    assert metrics(out)[1]["test_acc"] > 0


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--dataset", "mnist"], "unknown dataset 'mnist'; available: digits"),
        (["--arch", "alexnet"], "unknown architecture 'alexnet'; available: resnet18, resnet19, tiny"),
        (["-T", "0"], "timesteps must be an integer >= 1, got 0"),
        (["--batch-size", "0"], "batch_size must be an integer >= 1, got 0"),
        (["--probe-size", "0"], "probe_size must be an integer >= 1, got 0"),
        (["--epochs", "-1"], "epochs must be an integer >= 1"),
        (["--lr", "0"], "lr must be a positive number"),
        (["--save-every", "-1"], "save_every must be a number of minutes >= 0, got -1.0"),
        (["--resume"], "no checkpoint in"),
        (["--arch", "vgg13"], "8x8 images leave no feature map; it needs at least 32x32"),
        (["--data-path", "some/folder"], "digits ships with the package and reads no --data-path (some/folder); "
                                         "to train on a local folder pass it as the dataset: --dataset some/folder"),
        (["--device", "tpu"], "device 'tpu': not a device name; use cpu, cuda, cuda:N or auto"),
    ],
)
def test_bad_arguments(tmp_path, capsys, argv, message):
    assert cli.main(["train", "--out", str(tmp_path / "x"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.slow


def test_resume_of_a_finished_run_says_there_is_nothing_to_train(tmp_path):
    cfg = short(tmp_path, epochs=1)
    train(cfg)
    before = (tmp_path / "run" / "trainer_state.safetensors").read_bytes()
    logged = []
    result = train(cfg, resume=True, explicit=set(), log=logged.append)
    assert logged == [f"{tmp_path / 'run'} has trained 1 of 1 epochs: nothing to train (raise --epochs)"]
    assert result["epoch"] == 1 and (tmp_path / "run" / "trainer_state.safetensors").read_bytes() == before


def test_a_compile_mode_asks_for_compiling(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(train_module, "train", lambda cfg, **kwargs: seen.append(cfg) or {})
    monkeypatch.setenv("RANK", "1")  # nothing to report
    for argv, compiled in ((["--compile-mode", "reduce-overhead"], True), ([], False), (["--compile"], True)):
        assert cli.main(["train", "--out", str(tmp_path / "x"), *argv]) == 0
        assert seen.pop().compile is compiled, argv


def test_a_cuda_device_this_machine_lacks(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"device 'cuda:3': this machine has 2 CUDA device\(s\), cuda:0 .. cuda:1"):
        resolve_device("cuda:3")


def test_resume_with_another_architecture(tmp_path, capsys):
    train(short(tmp_path, epochs=1))
    assert cli.main(["train", "--out", str(tmp_path / "run"), "--resume", "--arch", "resnet19"]) == 2
    assert "--arch 'resnet19' (checkpoint: 'tiny')" in capsys.readouterr().err


def test_corrupt_and_truncated_weights(tmp_path, capsys):
    train(short(tmp_path, epochs=1))
    out = tmp_path / "run"
    weights = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        M.load(out)
    assert cli.main(["eval", "--checkpoint", str(out)]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err
    (out / "model.safetensors").write_bytes(b"\x80\x04\x95" + weights[3:])
    with pytest.raises(CheckpointError, match="pickle"):
        M.load(out)


def test_weights_of_another_config(tmp_path):
    train(short(tmp_path, epochs=1))
    out = tmp_path / "run"
    config = json.loads((out / "config.json").read_text())
    config["num_classes"] = 7
    config["label_names"] = None
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not match the model its config describes"):
        M.load(out)
    (out / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    with pytest.raises(CheckpointError, match="not written by mpdagl-triton"):
        M.load(out)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = short(tmp_path)
    real_loss = train_module.loss_fn
    calls = {"n": 0}

    def poisoned(cfg_, per_timestep, labels):
        calls["n"] += 1
        loss = real_loss(cfg_, per_timestep, labels)
        return loss * float("nan") if calls["n"] > 30 else loss  # epoch 2 (22 steps per epoch)

    monkeypatch.setattr(train_module, "loss_fn", poisoned)
    with pytest.raises(TrainingDiverged, match="loss became nan at epoch 2"):
        train(cfg)
    out = tmp_path / "run"
    assert json.loads((out / "trainer_state.json").read_text())["epoch"] == 1
    model = M.load(out)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_atomic_write_keeps_the_old_file_on_a_crash(tmp_path, monkeypatch):
    target = tmp_path / "file.bin"
    atomic_write_bytes(target, b"old")

    def crash(*_):
        raise OSError("disk gone")

    monkeypatch.setattr("os.replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]  # no temporary left behind


@pytest.mark.slow
def test_a_folder_in_use_by_a_run_refuses_a_second_run_and_a_resume(tmp_path, capsys):
    """Seen: a resume started while the first run still trained interleaved metrics.jsonl
    (epochs 12, 16, 13, 17, ...). The running process holds the folder; others fail untouched."""
    cfg = short(tmp_path, epochs=1)
    train(cfg)
    out = tmp_path / "run"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with train_module.hold_output_dir(out, create=True):  # a run that is still training
        for extra in ([], ["--resume", "--epochs", "2"]):
            assert cli.main(["train", "--out", str(out), *extra]) == 2
            assert f"output folder {out} is in use by another training run (pid {os.getpid()})" in \
                capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    train(dataclasses.replace(cfg, epochs=2), resume=True, explicit={"epochs"})  # released with its holder
    assert [r["epoch"] for r in metrics(out)] == [1, 2]


@pytest.mark.slow


def test_a_fresh_run_into_a_folder_holding_a_run_is_refused_unless_overwrite(tmp_path, capsys):
    """`mpdagl train` twice into one folder replaced the first run at the second's first epoch:
    a forgotten --resume cost the whole run. Now refused untouched; --overwrite starts over."""
    cfg = short(tmp_path, epochs=1)
    train(cfg)
    out = tmp_path / "run"
    (out / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert cli.main(["train", "--out", str(out), "--epochs", "2"]) == 2
    assert (f"{out} already holds a run trained to epoch 1 of 1: continue it with --resume, start over "
            "with --overwrite") in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert cli.main(["train", "--out", str(out), "--resume", "--overwrite"]) == 2
    assert "pick one" in capsys.readouterr().err

    train(dataclasses.replace(cfg, epochs=2), overwrite=True, stop_after_epoch=1)
    assert [r["epoch"] for r in metrics(out)] == [1]  # the first run's line is gone, not kept before it
    state = json.loads((out / train_module.STATE_JSON).read_text())
    assert state["config"]["epochs"] == 2
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_without_out_a_second_run_gets_a_folder_of_its_own(tmp_path, monkeypatch, capsys):
    """`mpdagl train` twice: the second trains into runs/digits-2 and says so; --resume and
    --overwrite (no --out) mean runs/digits itself."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--epochs", "1", "--device", "cpu"]) == 0
    first = (tmp_path / "runs" / "digits" / "trainer_state.safetensors").read_bytes()
    capsys.readouterr()
    assert cli.main(["train", "--epochs", "1", "--device", "cpu", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert ("runs/digits holds an earlier run; this one trains into runs/digits-2 (--out DIR to choose, "
            "--overwrite to replace runs/digits)") in printed and "checkpoint in runs/digits-2" in printed
    assert (tmp_path / "runs" / "digits" / "trainer_state.safetensors").read_bytes() == first
    assert cli.main(["train", "--epochs", "2", "--device", "cpu", "--resume"]) == 0
    assert "resuming runs/digits after epoch 1" in capsys.readouterr().out
    assert cli.main(["train", "--epochs", "1", "--device", "cpu", "--overwrite"]) == 0
    assert "checkpoint in runs/digits\n" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["digits", "digits-2"]


def test_metrics_without_a_checkpoint_do_not_block_a_fresh_run(tmp_path):
    """Metrics whose checkpoint never landed (killed during the first epoch's write) hold no
    run: a fresh run starts without --overwrite and drops them."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_acc": 0.5}) + "\n")
    train(short(tmp_path, epochs=1))
    assert [r["epoch"] for r in metrics(out)] == [1] and metrics(out)[0]["test_acc"] != 0.5


@pytest.mark.slow


def test_resuming_with_another_process_count_says_so(tmp_path):
    from mpdagl_triton.checkpoint import load_tensors, save_tensors

    cfg = short(tmp_path, epochs=1)
    train(cfg)
    path = tmp_path / "run" / train_module.STATE_NAME
    tensors, metadata = load_tensors(path)
    state = json.loads(metadata["state"])
    assert state["world_size"] == 1
    save_tensors(path, tensors, metadata={**metadata, "state": json.dumps({**state, "world_size": 2})})
    logged = []
    train(dataclasses.replace(cfg, epochs=2), resume=True, explicit={"epochs"}, log=logged.append)
    assert any("was trained by 2 process(es), this run has 1: it continues, but not bit-identically" in line
               for line in logged)


def test_ctrl_c_says_where_the_run_stands(tmp_path, capsys, monkeypatch):
    """Ctrl-C during `mpdagl train`: exit 130 with the saved epoch and the resume command (or
    that nothing was saved yet), not a traceback."""
    real_train = train_module.train

    def interrupted_after(epochs):
        def run(cfg, **kwargs):
            if epochs:
                real_train(dataclasses.replace(cfg, epochs=3), stop_after_epoch=epochs)
            raise KeyboardInterrupt
        return run

    out = tmp_path / "run"
    monkeypatch.setattr(train_module, "train", interrupted_after(0))
    assert cli.main(["train", "--out", str(out)]) == 130
    assert f"interrupted before an epoch ended; no checkpoint in {out}" in capsys.readouterr().err
    monkeypatch.setattr(train_module, "train", interrupted_after(1))
    assert cli.main(["train", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert f"interrupted; {out} holds epoch 1: continue with `mpdagl train --out {out} --resume`" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_resume_from_python_continues_to_the_new_epochs(tmp_path):
    """``train(cfg, resume=True)`` takes the resumable fields from cfg, as ``--resume --epochs``."""
    train(short(tmp_path, epochs=1))
    result = train(short(tmp_path, epochs=2), resume=True)
    assert result["epoch"] == 2
    assert [row["epoch"] for row in metrics(tmp_path / "run")] == [1, 2]
    with pytest.raises(ValueError, match=r"--lr 0.2 \(checkpoint: 0.05\)"):
        train(short(tmp_path, epochs=3, lr=0.2), resume=True)


def test_a_failed_start_leaves_no_folder_behind(tmp_path, capsys):
    out = tmp_path / "fresh"
    assert cli.main(["train", "--out", str(out), "--amp", "fp16", "--device", "cpu"]) == 2
    assert "--amp fp16 needs a CUDA device" in capsys.readouterr().err
    assert not out.exists()
    out.mkdir()  # a folder the user made stays as it was
    (out / "notes.txt").write_text("mine")
    assert cli.main(["train", "--out", str(out), "--amp", "fp16", "--device", "cpu"]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


@pytest.mark.slow
def test_a_small_model_trains_on_one_cpu_thread(tmp_path, monkeypatch):
    """OpenMP's threads spin more than they work on a tiny model, ruinously so on busy cores;
    the run's thread count is its own, and the caller's is restored afterwards."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    seen = []
    real_epoch = train_module.train_one_epoch

    def record(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_one_epoch", record)
    train(short(tmp_path, epochs=1))
    assert seen == [1] and torch.get_num_threads() == before
    train(short(tmp_path, epochs=2, threads=2), resume=True)
    assert seen == [1, 2] and torch.get_num_threads() == before


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert cli.main(["train", "--out", str(blocker / "run")]) == 2
    assert "is not writable" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
@pytest.mark.slow
def test_compiled_training_epoch(tmp_path, mode):
    """--compile runs the whole model through torch.compile (reference ops on the CPU; CUDA
    graphs, which reduce-overhead adds on a GPU, do not apply there, but the step marking does)."""
    result = train(short(tmp_path, epochs=1, compile=True, compile_mode=mode))
    assert result["test_acc"] > 0.5


@pytest.mark.slow
def test_compiled_evaluation_compiles_one_graph_for_a_ragged_split(tmp_path):
    """The test split's last batch (360 digits = 5 x 64 + 40) is padded to the others' size, so a
    compiled model evaluates every batch with one graph, and the metrics equal eager ones."""
    from torch._dynamo.testing import CompileCounter

    from mpdagl_triton import data

    cfg = short(tmp_path, compile=True)
    dataset = data.load(cfg.dataset, timesteps=cfg.timesteps)
    assert len(dataset.test) % cfg.batch_size
    model = train_module.build_model(cfg, dataset)
    loader = data.Loader(dataset.test, dataset, cfg.batch_size, torch.device("cpu"), train=False)
    counter = CompileCounter()
    torch._dynamo.reset()
    compiled = train_module.evaluate(cfg, torch.compile(model, backend=counter), loader, torch.device("cpu"))
    assert counter.frame_count == 1
    eager = train_module.evaluate(dataclasses.replace(cfg, compile=False), model, loader, torch.device("cpu"))
    assert compiled == pytest.approx(eager, rel=1e-6)


def test_evaluation_under_cuda_graphs_starts_a_step_per_batch(tmp_path, monkeypatch):
    """reduce-overhead: every eval batch begins a CUDA-graph step, so the outputs of the batch
    before (consumed by then) may be overwritten instead of a new graph being recorded."""
    from mpdagl_triton import data

    cfg = short(tmp_path, compile=True, compile_mode="reduce-overhead")
    dataset = data.load(cfg.dataset, timesteps=cfg.timesteps)
    loader = data.Loader(dataset.test, dataset, cfg.batch_size, torch.device("cpu"), train=False)
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    train_module.evaluate(cfg, train_module.build_model(cfg, dataset), loader, torch.device("cpu"))
    assert len(marks) == len(loader) == 6


def test_lagged_readout_on_the_cpu_is_immediate():
    readout = train_module.LaggedReadout(torch.device("cpu"))
    assert readout.latest is None
    readout.post(torch.tensor([2.0, 3.0]), tag=7)
    assert readout.latest == ([2.0, 3.0], 7)
