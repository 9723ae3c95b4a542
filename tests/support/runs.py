"""Comparing training runs: the same weights and the same metrics, bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import torch

import mpdagl_triton as M

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
