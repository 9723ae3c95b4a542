"""Long runs on preemptible clusters: mid-epoch resume points, `--resume auto`, torchrun restarts."""

import json
from pathlib import Path

import pytest
import torch

from mpdagl_triton import cli, data, train as train_module
from mpdagl_triton.train import TrainConfig, train
from support.runs import assert_same_run, signal_at

REAL_LOSS = train_module.loss_fn


def _cifar_like(n: int) -> tuple[data.Split, data.Dataset]:
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    split = data.Split(images, torch.arange(n) % 10)
    ds = data.Dataset("fake", split, split, [str(i) for i in range(10)], data.CIFAR_MEAN, data.CIFAR_STD, "cifar")
    return split, ds


@pytest.mark.parametrize("world", [1, 2])
def test_a_loader_resumed_mid_epoch_hands_out_the_same_remaining_batches(world):
    """An epoch stopped after any batch and continued from the loader's position in a new loader
    gives the batches (and AutoAugment's draws) the uninterrupted epoch gives from there, without
    preparing the chunks before; so does the next epoch."""
    split, ds = _cifar_like(48)

    def loaders():  # three chunks of two batches (of 8 images, or 4 per process)
        return [data.Loader(split, ds, 8, torch.device("cpu"), train=True, rank=r, world=world,
                            augment_chunk_elements=2 * (8 // world) * 3 * 8 * 8) for r in range(world)]

    full = [list(loader.epoch(7, 1)) + list(loader.epoch(7, 2)) for loader in loaders()]
    for stop in (1, 2, 5, 6):
        for rank, loader in enumerate(loaders()):
            batches = loader.epoch(7, 1)
            for _ in range(stop):
                next(batches)
            position = loader.position
            assert (position.batch, position.chunk_start) == (stop, stop // 2 * 2)
            assert (position.generator is None) == (stop == 6)  # no chunk follows the last
            again = loaders()[rank]
            rest = list(again.epoch(7, 1, start=position)) + list(again.epoch(7, 2))
            expected = full[rank][stop:]
            assert len(rest) == len(expected)
            for (x, y), (x0, y0) in zip(rest, expected):
                assert torch.equal(x, x0) and torch.equal(y, y0)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("preemption") / "full"
    train(TrainConfig(out=str(out), epochs=2, device="cpu"))
    return out


@pytest.mark.slow


def test_resume_auto_starts_afresh_or_continues_and_refuses_another_configuration(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert cli.main(["train", "--out", out, "--epochs", "1", "--resume", "auto"]) == 0
    assert "resuming" not in capsys.readouterr().out  # nothing to continue: a fresh run
    assert cli.main(["train", "--out", out, "--epochs", "2", "--resume", "auto"]) == 0
    assert f"resuming {out} after epoch 1" in capsys.readouterr().out
    assert cli.main(["train", "--out", out, "--resume", "auto", "--lr", "0.2", "--arch", "resnet19"]) == 2
    assert ("--resume: the checkpoint was trained with other settings: --arch 'resnet19' (checkpoint: 'tiny'); "
            "--lr 0.2 (checkpoint: 0.05)") in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "--out", out, "--resume", "always"])
    assert "invalid choice: 'always'" in capsys.readouterr().err


@pytest.mark.slow


def test_a_torchrun_restart_resumes_and_does_not_overwrite(tmp_path, digits_run, monkeypatch, capsys):
    """A process torchrun restarts (the same run id as the point it finds) continues that point,
    even when the command said --overwrite (its first attempt did); the result is the run's."""
    out = tmp_path / "run"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-7")
    signal_at(monkeypatch, 30)
    argv = ["train", "--out", str(out), "--epochs", "2", "--device", "cpu", "--overwrite"]
    assert cli.main(argv) == 143
    monkeypatch.setattr(train_module, "loss_fn", REAL_LOSS)
    assert cli.main(argv) == 0
    assert f"resuming {out} at step 30 (epoch 2, batch 8 of 22)" in capsys.readouterr().out
    assert_same_run(out, digits_run)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-8")  # another launch: --overwrite starts afresh
    assert cli.main([*argv, "--epochs", "1"]) == 0
    assert "resuming" not in capsys.readouterr().out


def test_mid_epoch_resume_with_augmentation_over_several_chunks(tmp_path, monkeypatch):
    """CIFAR's augmentation, two chunks of two batches per epoch: stopped inside a chunk (step 3),
    resumed, stopped again at a chunk's start in the next epoch (step 6) and resumed, the run ends
    bit-identical to one never stopped."""
    from support.fake_data import fake_cifar

    monkeypatch.setattr(data, "AUGMENT_CHUNK_ELEMENTS", 2 * 8 * 3 * 32 * 32)
    cifar = fake_cifar(tmp_path / "cifar", n_train=32, n_test=8)
    argv = ["train", "--dataset", "cifar10", "--data-path", str(cifar), "--arch", "tiny", "--batch-size", "8",
            "--epochs", "2", "--device", "cpu"]
    assert cli.main([*argv, "--out", str(tmp_path / "full")]) == 0
    staged = [*argv, "--out", str(tmp_path / "staged")]
    signal_at(monkeypatch, 3)
    assert cli.main(staged) == 143
    signal_at(monkeypatch, 3)
    assert cli.main([*staged, "--resume"]) == 143
    assert train_module.load_checkpoint(tmp_path / "staged")[1]["step"] == 6
    monkeypatch.setattr(train_module, "loss_fn", REAL_LOSS)
    assert cli.main([*staged, "--resume"]) == 0
    assert_same_run(tmp_path / "staged", tmp_path / "full")


def test_a_mid_epoch_point_of_another_process_count_continues_and_says_so(tmp_path, monkeypatch):
    """A point written by 2 processes, resumed by 1: the rest of the epoch (its images, not its
    augmentation draws), the summed metrics, and a note that it is not bit-identical."""
    from mpdagl_triton.checkpoint import load_tensors, save_tensors

    out = tmp_path / "run"
    signal_at(monkeypatch, 5)
    assert cli.main(["train", "--out", str(out), "--epochs", "1", "--device", "cpu"]) == 143
    path = out / train_module.STATE_NAME
    tensors, metadata = load_tensors(path)
    state = json.loads(metadata["state"])
    for name in ("epoch.generator", "epoch.sums"):  # rank 1's, a copy of rank 0's
        tensors[f"{name}.1"] = tensors[f"{name}.0"].clone()
    save_tensors(path, tensors, metadata={**metadata, "state": json.dumps({**state, "world_size": 2})})
    monkeypatch.setattr(train_module, "loss_fn", REAL_LOSS)
    logged = []
    result = train(TrainConfig(out=str(out)), resume=True, explicit=set(), log=logged.append)
    assert "resuming" in logged[0] and "at step 5 (epoch 1, batch 5 of 22)" in logged[0]
    assert "was trained by 2 process(es), this run has 1: it continues, but not bit-identically" in logged[1]
    assert result["epoch"] == 1 and 0 < result["train_acc"] < 1
