"""Killed runs lose nothing: SIGKILL mid-epoch and mid-checkpoint, SIGTERM and SIGINT, then
--resume; disk problems while writing; a corrupt resume point."""

import signal
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
import torch

import mpdagl_triton as M
from mpdagl_triton import cli, train as train_module
from mpdagl_triton.train import TrainConfig, load_checkpoint, train
from support.runs import assert_same_run, signal_at

RUNNER = Path(__file__).parent / "support" / "fault_runner.py"
EPOCHS = 3  # 22 steps per epoch on digits


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faults") / "full"
    train(TrainConfig(out=str(out), epochs=EPOCHS, device="cpu"))
    return out


def kill_run(out: Path, *how: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(RUNNER), *how, "--out", str(out), "--epochs", str(EPOCHS), "--device", "cpu"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "how,completed",
    [
        (("step", "30"), 1),  # in the middle of epoch 2
        (("replace", "trainer_state.safetensors", "2"), 1),  # epoch 2's resume point, not yet renamed
        (("replace", "model.safetensors", "2"), 2),  # epoch 2's resume point in place, the model not
    ],
)
@pytest.mark.slow
def test_sigkill_then_resume_loses_nothing(tmp_path, uninterrupted, how, completed):
    out = tmp_path / "run"
    killed = kill_run(out, *how)
    assert killed.returncode == -9, killed.stderr[-2000:]
    # the last completed epoch is intact and loadable
    assert load_checkpoint(out)[1]["epoch"] == completed
    assert "partial" not in load_checkpoint(out)[1]
    assert M.load(out).num_classes == 10
    assert cli.main(["train", "--out", str(out), "--resume"]) == 0
    assert not list(out.glob(".*.tmp-*"))  # the killed write's temporary is gone
    assert_same_run(out, uninterrupted)


@pytest.mark.slow


def test_sigkill_while_writing_a_mid_epoch_point_resumes_from_the_one_before(tmp_path, uninterrupted):
    """A resume point after every step (--save-every near 0); killed just before the rename of the
    one at step 30: the latest point is gone, the one kept before it (step 29) continues."""
    out = tmp_path / "run"
    killed = kill_run(out, "replace", "trainer_state.safetensors", "30", "--save-every", "1e-9")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (out / "trainer_state.safetensors").exists()
    assert load_checkpoint(out)[1]["step"] == 29
    assert cli.main(["train", "--out", str(out), "--resume"]) == 0
    assert_same_run(out, uninterrupted)


@pytest.mark.slow


def test_a_full_disk_mid_epoch_warns_once_and_trains_on(tmp_path, uninterrupted, monkeypatch, capsys):
    """No space for the resume point of step 10: the one of step 9 stays loadable, one warning,
    and the run ends as if nothing had happened."""
    out = tmp_path / "run"
    real = train_module.save_tensors
    calls, loadable = {"n": 0}, []

    def full_disk(path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 10:
            loadable.append(load_checkpoint(out)[1]["step"])
            raise OSError(28, "No space left on device")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(train_module, "save_tensors", full_disk)
    argv = ["train", "--out", str(out), "--epochs", str(EPOCHS), "--device", "cpu", "--save-every", "1e-9"]
    assert cli.main(argv) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning")]
    assert warnings == [f"warning: could not write the checkpoint of step 10 (epoch 1, batch 10 of 22) into {out} "
                        "([Errno 28] No space left on device); the previous checkpoint is intact; training goes on"]
    assert loadable == [9]
    assert_same_run(out, uninterrupted)


@pytest.mark.slow


def test_a_full_disk_at_a_stop_signal_stops_cleanly_naming_the_error(tmp_path, monkeypatch, capsys):
    """SIGTERM, and no space for the resume point of its step: exit 1 with the error, the point of
    the last epoch intact."""
    out = tmp_path / "run"
    real = train_module.save_tensors

    def full_disk(path, tensors, metadata=None, **kwargs):
        if "partial" in metadata["state"]:
            raise OSError(28, "No space left on device")
        return real(path, tensors, metadata, **kwargs)

    monkeypatch.setattr(train_module, "save_tensors", full_disk)
    signal_at(monkeypatch, 30)
    assert cli.main(["train", "--out", str(out), "--epochs", str(EPOCHS), "--device", "cpu"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"mpdagl train: error: could not write the checkpoint of step 30 (epoch 2, batch 8 of 22) into {out} "
        "([Errno 28] No space left on device); the previous checkpoint is intact")
    assert load_checkpoint(out)[1]["epoch"] == 1 and not list(out.glob(".*.tmp-*"))


@pytest.mark.slow


def test_a_corrupt_resume_point_is_refused_by_name_and_the_previous_one_used(tmp_path, uninterrupted, capsys):
    out = tmp_path / "run"
    train(TrainConfig(out=str(out), epochs=EPOCHS, device="cpu"), stop_after_epoch=2)
    latest = out / "trainer_state.safetensors"
    latest.write_bytes(latest.read_bytes()[:1000])  # torn by a failing disk
    assert cli.main(["train", "--out", str(out), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert (f"warning: {latest} is not a readable safetensors file (corrupt or truncated?)" in printed
            and "resuming from the previous resume point, trainer_state.previous.safetensors" in printed)
    assert f"resuming {out} after epoch 1" in printed
    assert_same_run(out, uninterrupted)
    for path in (latest, out / "trainer_state.previous.safetensors"):
        path.write_bytes(b"\0" * 100)
    assert cli.main(["train", "--out", str(out), "--resume", "--epochs", "4"]) == 2
    assert f"{latest} is not a readable safetensors file" in capsys.readouterr().err


def test_a_full_disk_is_refused_before_training(tmp_path, monkeypatch, capsys):
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(train_module.shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 1000, 1000))
    assert cli.main(["train", "--out", str(tmp_path / "run")]) == 2
    assert "MiB free; a checkpoint needs about" in capsys.readouterr().err


@pytest.mark.slow
def test_no_space_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    real = train_module.save_tensors
    calls = {"n": 0}

    def full_disk(path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # epoch 2's resume point
            raise OSError(28, "No space left on device")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(train_module, "save_tensors", full_disk)
    assert cli.main(["train", "--out", str(tmp_path / "run"), "--epochs", "3"]) == 1
    err = capsys.readouterr().err
    assert "could not write the checkpoint of epoch 2" in err and "No space left on device" in err
    assert "the previous checkpoint is intact" in err
    assert load_checkpoint(tmp_path / "run")[1]["epoch"] == 1


def test_resume_refuses_a_pickled_trainer_state(tmp_path, capsys):
    train(TrainConfig(out=str(tmp_path / "run"), epochs=1))
    state = tmp_path / "run" / "trainer_state.safetensors"
    torch.save({"epoch": 1}, state)  # a pickle where a safetensors file belongs
    assert cli.main(["train", "--out", str(tmp_path / "run"), "--resume"]) == 2
    assert "looks like a pickle / torch.save file" in capsys.readouterr().err


@pytest.mark.parametrize("signum,step,saved", [
    (signal.SIGTERM, 30, "step 30 (epoch 2, batch 8 of 22)"),  # mid-epoch
    (signal.SIGINT, 5, "step 5 (epoch 1, batch 5 of 22)"),
    (signal.SIGTERM, 44, "step 44 (the end of epoch 2)"),  # the epoch's last step: the epoch ends first
])
@pytest.mark.slow
def test_a_stop_signal_saves_the_step_in_progress(tmp_path, uninterrupted, monkeypatch, capsys, signum, step, saved):
    """SIGTERM (a scheduler's preemption) or Ctrl-C: the step in progress ends, a resume point is
    written there, the process exits 128 + the signal with one line naming the step; the resumed
    run ends bit-identical to one never stopped."""
    out = tmp_path / "run"
    signal_at(monkeypatch, step, signum)
    argv = ["train", "--out", str(out), "--epochs", str(EPOCHS), "--device", "cpu"]
    assert cli.main(argv) == 128 + signum
    err = capsys.readouterr().err
    name = signal.Signals(signum).name
    assert err.strip().splitlines()[-1] == (f"mpdagl train: stopped by {name}; {out} holds {saved}: continue with "
                           f"`mpdagl train --out {out} --resume`")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are gone with the run
    monkeypatch.undo()
    assert cli.main(["train", "--out", str(out), "--resume"]) == 0
    assert f"resuming {out} at {saved}" in capsys.readouterr().out or "end of epoch" in saved
    assert_same_run(out, uninterrupted)


def test_a_safetensors_header_length_that_starts_like_a_pickle_loads(tmp_path):
    """A safetensors file starts with its header's length: 0x80 first for one length in 256
    (mid-epoch points vary in length), which is no pickle."""
    from mpdagl_triton.checkpoint import load_tensors, save_tensors

    for pad in range(256):
        save_tensors(tmp_path / "t.safetensors", {"x": torch.zeros(1)}, metadata={"pad": "x" * pad})
        if (tmp_path / "t.safetensors").read_bytes()[:1] == b"\x80":
            break
    assert (tmp_path / "t.safetensors").read_bytes()[:1] == b"\x80"
    assert torch.equal(load_tensors(tmp_path / "t.safetensors")[0]["x"], torch.zeros(1))
