"""Training runs: compared bit for bit (weights and metrics), and interrupted by a signal."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import torch

import mpdagl_triton as M
from mpdagl_triton import train as train_module

TIMING = {"seconds", "images_per_s"}  # the only fields of a metrics line allowed to differ


def metrics(out: Path) -> list[dict]:
    """The run's metrics.jsonl lines without their timings."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def assert_same_run(a: Path, b: Path) -> None:
    """Bit-identical final weights (and running statistics) and metrics."""
    wa, wb = M.load(a).state_dict(), M.load(b).state_dict()
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert metrics(a) == metrics(b)


def signal_at(monkeypatch, step: int, signum: int = signal.SIGTERM) -> None:
    """This process receives ``signum`` during its ``step``-th training step from now (a
    scheduler's preemption, or Ctrl-C)."""
    real_loss = train_module.loss_fn
    calls = {"n": 0}

    def loss_fn(*args):
        calls["n"] += 1
        if calls["n"] == step:
            os.kill(os.getpid(), signum)
        return real_loss(*args)

    monkeypatch.setattr(train_module, "loss_fn", loss_fn)
