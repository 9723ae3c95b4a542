"""The benchmark commands still run (tiny sizes, CPU), as documented: `python -m bench.<name>` from
the repository root. They assert nothing about speed."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bench(name: str, *args: str, json_out: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # as a user runs it
    done = subprocess.run([sys.executable, "-m", f"bench.{name}", *args, "--json", str(json_out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(json_out.read_text())


def test_layer_benchmark(tmp_path):
    rows = bench("layer", "--shapes", "2x2x3x4x4", "--dtypes", "fp32", "--impls", "reference", "fused",
                 "--warmup", "0", "--repeats", "1", json_out=tmp_path / "l.json")["rows"]
    assert rows[0]["impl"] == "reference" and rows[0]["fwd_bwd_ms"] > 0
    assert rows[1]["note"] == "needs CUDA" or rows[1]["fwd_bwd_ms"] > 0


def test_train_step_benchmark(tmp_path):
    rows = bench("train_step", "--settings", "t2b128", "--batch", "2", "--dtype", "fp32", "--no-compile",
                 "--impls", "mpdagl", "ann", "--warmup", "0", "--repeats", "1", json_out=tmp_path / "t.json")["rows"]
    assert [r["impl"] for r in rows] == ["mpdagl", "ann"]
    assert rows[0]["ms"] > 0 and rows[1]["vs_ann"] == 1.0


def test_data_and_probe_benchmarks(tmp_path):
    rows = bench("data", "--synthetic", "256", "--batch-size", "64", "--epochs", "1", json_out=tmp_path / "d.json")["rows"]
    assert rows[0]["images"] == 256 and rows[0]["augmentation"] == "cifar"
    assert 0 < bench("probe", "--images", "256", "--probe-size", "16", json_out=tmp_path / "p.json")["overhead"]


def test_register_report(tmp_path):
    rows = bench("registers", "--timesteps", "4", "--layers", "head", json_out=tmp_path / "r.json")["rows"]
    assert {r["kernel"] for r in rows} == {"stats", "forward", "backward sums", "backward dx"}
    assert all(r["registers"] > 0 and r["spill_bytes"] == 0 for r in rows)  # no kernel spills


def test_host_cost_benchmark(tmp_path):
    rows = bench("host", "--depth", "2", json_out=tmp_path / "h.json")["rows"]
    assert [r["mode"] for r in rows] == ["eager", "torch.compile"]
    # training: statistics, their merge, forward, backward sums, backward dx
    assert all(r["triton_launches"] == 5 and r["host_us"] > 0 for r in rows)
    assert rows[0]["torch_kernels"] == sum(rows[0]["ops"].values()) > 0


def test_suite_runs_every_part_and_times_it(tmp_path, monkeypatch):
    """`python -m bench.all` wiring: each part runs once with its JSON under --out, and the wall
    time of each part and of the whole suite lands in suite.json (the parts run at GPU sizes, so
    they are stubbed here; each runs alone in the tests above)."""
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import all as suite

    calls = []
    for module in (suite.layer, suite.train_step, suite.data_bench, suite.probe):
        monkeypatch.setattr(module, "main", lambda argv, name=module.__name__: calls.append((name, argv)))
    payload = suite.main(["--out", str(tmp_path)])
    assert [name for name, _ in calls] == ["bench.layer", "bench.train_step", "bench.data", "bench.probe"]
    for _, argv in calls:
        assert argv[argv.index("--json") + 1].startswith(str(tmp_path))
    rows = payload["rows"]
    assert [row["part"] for row in rows] == ["layer", "train_step", "data", "probe", "suite"]
    assert rows[-1]["seconds"] == sum(row["seconds"] for row in rows[:-1])
    assert json.loads((tmp_path / "suite.json").read_text())["rows"] == rows


def test_tune_calls_the_launchers_as_they_are(monkeypatch):
    """`bench.tune` runs only on a GPU: here its kernel timings run once each through the
    interpreter (do_bench stubbed), so a launcher signature change cannot break it unseen."""
    import torch
    import triton.testing

    monkeypatch.syspath_prepend(str(ROOT))
    from bench import tune

    calls = []

    def once(fn, **_):
        fn()
        calls.append(fn.__name__)
        return 1.0

    monkeypatch.setattr(triton.testing, "do_bench", once)
    for channels_last in (False, True):
        row = tune.time_kernels([2, 2, 4, 3, 3], torch.float32, channels_last, "default",
                                torch.device("cpu"), bandwidth=1.0)
        assert row["total_ms"] == 3.0
    assert calls == ["stats", "forward", "backward"] * 2
