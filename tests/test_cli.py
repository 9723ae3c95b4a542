"""The ``mpdagl`` command itself: help, version, which errors become one line, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from mpdagl_triton import __version__, cli
from mpdagl_triton import train as train_module
from mpdagl_triton.errors import InvalidInput, Unavailable


def test_version_and_plain_help(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"mpdagl-triton {__version__}"
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert "mpdagl train" in text and "``" not in text


@pytest.mark.parametrize("error, code", [(InvalidInput("bad option --x"), 2), (Unavailable("no network"), 1)])
def test_the_librarys_own_errors_are_one_line(error, code, monkeypatch, capsys, tmp_path):
    def fail(cfg, **kwargs):
        raise error

    monkeypatch.setattr(train_module, "train", fail)
    assert cli.main(["train", "--out", str(tmp_path / "x")]) == code
    assert capsys.readouterr().err == f"mpdagl train: error: {error}\n"


def test_an_unexpected_error_keeps_its_traceback(monkeypatch, tmp_path):
    def bug(cfg, **kwargs):
        raise ValueError("a bug, not bad input")  # a plain ValueError is not the library's own

    monkeypatch.setattr(train_module, "train", bug)
    with pytest.raises(ValueError, match="a bug, not bad input"):
        cli.main(["train", "--out", str(tmp_path / "x")])


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.2, 1.0, 2.5, 6.0])
def test_ctrl_c_at_any_moment_is_a_quiet_130(delay, tmp_path):
    """SIGINT while Python imports torch, while the data loads, or while it trains (a resume point
    at the step in progress, named): exit 130, no traceback."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen([sys.executable, "-m", "mpdagl_triton.cli", "train", "--out", str(tmp_path / "run"),
                            "--epochs", "50"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=env)
    time.sleep(delay)
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=120)
    # 130, or killed by SIGINT itself, which Python does on purpose so that a shell sees 130 too
    assert run.returncode in (130, -signal.SIGINT), (out, err)
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith(
        ("mpdagl: interrupted", "mpdagl train: interrupted", "mpdagl train: stopped by SIGINT")), err


def test_a_missing_local_folder_is_named_not_sent_to_the_hub(tmp_path, capsys):
    for missing in ("./nope-folder", str(tmp_path / "nope"), "a/b/c"):
        assert cli.main(["train", "--dataset", missing, "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert err == (f"mpdagl train: error: dataset folder {missing} does not exist; check the path "
                       "(a Hub dataset is named user/name)\n"), err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow


def test_a_piped_log_gets_no_progress_bars(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mpdagl_triton.cli", "train", "--epochs", "1",
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr  # no bars, no warnings
    assert done.stdout.splitlines()[-1].startswith("final test accuracy")


def test_bad_options_fail_before_an_output_folder_is_chosen(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "digits").mkdir(parents=True)
    (tmp_path / "runs" / "digits" / "config.json").write_text("{}")  # an earlier run's folder
    assert cli.main(["train", "--arch", "resnet20"]) == 2
    captured = capsys.readouterr()
    assert "holds an earlier run" not in captured.out
    assert "unknown architecture 'resnet20' (did you mean resnet19 or resnet18?)" in captured.err


def test_missing_training_folders_are_named_at_once(tmp_path, monkeypatch, capsys):
    """runs/nothing is a missing folder under runs/, never a Hub repo to retry for."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "digits").mkdir(parents=True)
    assert cli.main(["eval", "runs/nothing"]) == 2
    assert "no folder runs/nothing (in runs/: digits)" in capsys.readouterr().err
    assert cli.main(["analyze", "runs/nothing"]) == 2
    assert "no folder runs/nothing" in capsys.readouterr().err
    assert cli.main(["eval"]) == 2
    assert "name the model to evaluate: mpdagl eval DIR" in capsys.readouterr().err
