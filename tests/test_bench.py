"""The benchmark commands still run (tiny sizes, CPU), as documented: `python -m bench.<name>` from
the repository root. They assert nothing about speed."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def bench(name: str, *args: str, json_out: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # as a user runs it
    done = subprocess.run([sys.executable, "-m", f"bench.{name}", *args, "--json", str(json_out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(json_out.read_text())


@pytest.mark.slow
def test_layer_benchmark(tmp_path):
    rows = bench("layer", "--shapes", "2x2x3x4x4", "--dtypes", "fp32", "--impls", "reference", "fused",
                 "--warmup", "0", "--repeats", "1", json_out=tmp_path / "l.json")["rows"]
    assert rows[0]["impl"] == "reference" and rows[0]["fwd_bwd_ms"] > 0
    assert rows[1]["note"] == "needs CUDA" or rows[1]["fwd_bwd_ms"] > 0


@pytest.mark.slow
def test_layer_benchmark_compiles_in_processes_of_their_own(tmp_path):
    """--jobs: a process per compiled implementation, shape and dtype compiles, then measures in
    its turn; eager rows are measured in the parent. Here the compiled reference, on the CPU."""
    payload = bench("layer", "--shapes", "2x2x3x4x4", "--dtypes", "fp32", "--impls", "reference-compiled",
                    "reference", "--jobs", "2", "--warmup", "0", "--repeats", "1", json_out=tmp_path / "l.json")
    assert payload["parallel_compile"]["processes"] == 1
    assert [r["impl"] for r in payload["rows"]] == ["reference-compiled", "reference"]
    assert all(r["fwd_bwd_ms"] > 0 for r in payload["rows"])


@pytest.mark.slow
def test_layer_measures_spikingjelly_in_processes_of_its_own(tmp_path, monkeypatch):
    """A failed CUDA graph capture poisons its process, so each SpikingJelly row comes
    from a child process: here the parent's `measure` refuses SpikingJelly, and the row still
    arrives; a child that dies gives a row that says so, and the next row is still measured."""
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import layer

    measure = layer.measure

    def measure_here(impl, *args, **kwargs):
        assert impl != "spikingjelly", "measured in the parent process"
        return measure(impl, *args, **kwargs)

    monkeypatch.setattr(layer, "measure", measure_here)
    options = ["--device", "cpu", "--shapes", "2x2x3x4x4", "--dtypes", "fp32", "--warmup", "0", "--repeats", "1"]
    rows = layer.main([*options, "--impls", "spikingjelly", "reference"])["rows"]
    assert rows[0]["impl"] == "spikingjelly" and rows[0]["dtype"] == "float32"
    assert rows[0]["note"] in ("needs CUDA", "spikingjelly not installed")
    assert rows[1]["impl"] == "reference" and rows[1]["fwd_bwd_ms"] > 0

    def died(commands, jobs, on_result):
        assert jobs == 1 and len(commands) == 1 and "--impls spikingjelly" in " ".join(commands[0])
        on_result(0, "its process exited with status 1: RuntimeError: Offset increment outside graph capture")
        return ["..."], 0.0

    monkeypatch.setattr(layer, "compile_then_measure", died)
    rows = layer.main([*options, "--impls", "spikingjelly", "reference"])["rows"]
    assert rows[0]["note"] == ("failed: its process exited with status 1: "
                               "RuntimeError: Offset increment outside graph capture")
    assert rows[1]["fwd_bwd_ms"] > 0


@pytest.mark.slow
def test_layer_benchmark_as_a_stem(tmp_path):
    """--stem: one input timestep at every step (timesteps=T for ours)."""
    rows = bench("layer", "--shapes", "3x2x3x4x4", "--dtypes", "fp32", "--impls", "reference",
                 "--warmup", "0", "--repeats", "1", "--stem", json_out=tmp_path / "l.json")["rows"]
    assert rows[0]["fwd_bwd_ms"] > 0 and rows[0]["shape"] == "3x2x3x4x4"


@pytest.mark.slow
def test_train_step_benchmark(tmp_path):
    rows = bench("train_step", "--settings", "t2b128", "--batch", "2", "--dtype", "fp32", "--no-compile",
                 "--impls", "mpdagl", "ann", "--warmup", "0", "--repeats", "1", "--profile", "1",
                 json_out=tmp_path / "t.json")["rows"]
    assert [r["impl"] for r in rows] == ["ann", "mpdagl"]  # the floor first: each ratio known when printed
    assert rows[1]["ms"] > 0 and rows[0]["vs_ann"] == 1.0 and rows[1]["vs_ann"] == rows[1]["ms"] / rows[0]["ms"]
    assert all(r["compile_s"] > 0 and r["latency_ms"] > 0 for r in rows)
    host = rows[1]["profile"]["host"]  # --profile on the CPU: the host side only
    assert host["families"]["aten"]["ms"] > 0 and host["families"]["optimizer"]["events"] == 2  # zero_grad, step
    assert host["launch_calls"] == 0 and "gpu_ms" not in rows[1]


def test_back_to_back_timing_is_per_call(monkeypatch):
    """Steps timed as a training loop runs them: ``repeats`` calls in a row per window, divided
    by ``repeats``, the median window (a clock that advances one second per call)."""
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import common

    clock, calls = [0.0], []
    monkeypatch.setattr(common.time, "perf_counter", lambda: clock[0])

    def step():
        calls.append(1)
        clock[0] += 1.0 if len(calls) != 9 else 30.0  # one slow call, in the second window

    assert common.back_to_back_ms(step, torch.device("cpu"), warmup=2, repeats=4, windows=3) == 1000.0
    assert len(calls) == 2 + 4 * 3


CHILD = """
import json, os, sys, time
from pathlib import Path
from bench.common import wait_for_turn
index, log, compile_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
turn, out = sys.argv[sys.argv.index("--turn") + 1], sys.argv[sys.argv.index("--json") + 1]
def note(event):
    with open(log, "a") as f:
        f.write(f"{index} {event} {time.monotonic()}\\n")
note("start")
note("threads:" + os.environ["TORCHINDUCTOR_COMPILE_THREADS"])
note(f"pid:{os.getpid()}")
if compile_s < 0:
    sys.exit("RuntimeError: compile broke")
time.sleep(compile_s)
note("compiled")
wait_for_turn(turn)
note("measuring")
time.sleep(0.05)
note("end")
Path(out).write_text(json.dumps({"rows": [{"index": int(index)}]}))
"""


@pytest.mark.slow
def test_compile_then_measure_times_nothing_beside_a_compile(tmp_path, monkeypatch, capsys):
    """Processes compile `jobs` at a time, at most `waiting` alive; each measures only once none
    is compiling, one at a time, in the commands' order; a process that dies says how."""
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import common
    from bench.common import compile_then_measure

    monkeypatch.delenv("TORCHINDUCTOR_COMPILE_THREADS", raising=False)
    log = tmp_path / "events"
    compile_s = [0.4, 0.1, -1, 0.2, 0.3]  # -1: dies while compiling
    commands = [[sys.executable, "-c", CHILD, str(i), str(log), str(c)] for i, c in enumerate(compile_s)]
    arrived = []
    results, seconds = compile_then_measure(commands, jobs=2, waiting=3,
                                            on_result=lambda i, result: arrived.append((i, result)))
    assert results[2] == "its process exited with status 1: RuntimeError: compile broke"
    assert "compile broke" in capsys.readouterr().err  # the dead process's stderr, for the log
    assert [r["rows"][0]["index"] for i, r in enumerate(results) if i != 2] == [0, 1, 3, 4]
    assert arrived == list(enumerate(results)) and seconds > 0
    events: dict[int, dict[str, float]] = {}
    for line in log.read_text().splitlines():
        index, event, at = line.split()
        events.setdefault(int(index), {})[event] = float(at)
    # inductor's compile workers split the cores between the processes compiling at once
    assert {event for e in events.values() for event in e if event.startswith("threads:")} == {
        f"threads:{max(1, (os.cpu_count() or 1) // 2)}"}
    compiling = [(e["start"], e.get("compiled", e["start"])) for e in events.values()]
    measuring = sorted((e["measuring"], e["end"]) for e in events.values() if "measuring" in e)
    alive = [(e["start"], e.get("end", e["start"])) for e in events.values()]

    def most_at_once(spans):
        return max(sum(a <= t < b for a, b in spans) for t, _ in spans)

    assert most_at_once(compiling) <= 2 and most_at_once(alive) <= 3
    for start, end in measuring:
        assert not any(a < end and start < b for a, b in compiling), "a measurement beside a compile"
    assert all(end <= next_start for (_, end), (next_start, _) in zip(measuring, measuring[1:]))
    in_turn = sorted((e["measuring"], i) for i, e in events.items() if "measuring" in e)
    assert [i for _, i in in_turn] == [0, 1, 3, 4]
    monkeypatch.setenv("TORCHINDUCTOR_COMPILE_THREADS", "5")  # the user's choice stands
    assert common.share_of_cores(3)["TORCHINDUCTOR_COMPILE_THREADS"] == "5"


def child_pids(log: Path) -> list[int]:
    return [int(line.split()[1][4:]) for line in log.read_text().splitlines() if line.split()[1].startswith("pid:")]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"  # exited, not yet reaped


@pytest.mark.slow
def test_waiting_processes_end_with_their_parent(tmp_path, monkeypatch):
    """A process waiting for its turn must not outlive the benchmark that started it, holding its
    GPU memory: the parent kills them when it fails, and an orphan ends by itself."""
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.common import compile_then_measure

    log = tmp_path / "events"
    commands = [[sys.executable, "-c", CHILD, str(i), str(log), "0"] for i in range(3)]

    def fail(i, result):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compile_then_measure(commands, jobs=3, waiting=3, on_result=fail)
    assert len(child_pids(log)) == 3 and all(gone(pid) for pid in child_pids(log))
    # the parent killed outright (no finally runs): the orphans notice and end
    log.unlink()
    parent = subprocess.Popen([sys.executable, "-c", "import sys; from bench.common import compile_then_measure; "
                               f"compile_then_measure({commands!r}, jobs=3, waiting=3, on_result=lambda i, r: input())"],
                              cwd=ROOT, stdin=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while (not log.exists() or log.read_text().count(" compiled ") < 3) and time.monotonic() < deadline:
        time.sleep(0.05)
    parent.kill()
    parent.wait()
    pids = child_pids(log)
    deadline = time.monotonic() + 10
    while not all(gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(pids) == 3 and all(gone(pid) for pid in pids)


def test_waiting_processes_fit_the_machine(monkeypatch):
    """Compiled processes wait holding their memory: no more than the machine holds (4 GiB of host
    memory each, 6 GiB of GPU memory on CUDA), 12 at most, 1 at least."""
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import common

    pages = {"SC_PAGE_SIZE": 4096}
    monkeypatch.setattr(common.os, "sysconf", lambda name: pages[name])
    for host_gib, fit in [(9, 2), (128, 12), (2, 1)]:
        pages["SC_PHYS_PAGES"] = (host_gib << 30) // 4096
        assert common.processes_that_fit() == (fit if not torch.cuda.is_available() else min(
            fit, torch.cuda.get_device_properties(0).total_memory // (6 << 30)) or 1)


def test_train_step_gives_every_step_a_process_with_jobs(monkeypatch):
    """--jobs N: one process per (implementation, setting) with the flags that shape its graph, the
    slowest to compile first; rows come back in the plan's order (the floor first, SpikingJelly
    last) with their ratios to the floor, and a process that died gives a row that says so."""
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import train_step

    seen = {}

    def fake(commands, jobs, on_result):
        seen["commands"], seen["jobs"] = commands, jobs
        for position, command in enumerate(commands):
            impl, setting = command[command.index("--impls") + 1], command[command.index("--settings") + 1]
            T, B, _ = train_step.SETTINGS[setting]
            layout, dtype = command[command.index("--layout") + 1], command[command.index("--dtype") + 1]
            row = {"impl": impl, "T": T, "B": B, "layout": layout, "dtype": dtype,
                   "ms": {"ann": 10.0, "mpdagl": 11.0, "reference": 20.0}.get(impl)}
            on_result(position, "its process exited with status 1: boom" if impl == "spikingjelly"
                      else {"rows": [row]})
        return [], 1.0

    monkeypatch.setattr(train_step, "compile_then_measure", fake)
    rows = train_step.main(["--jobs", "3", "--device", "cpu", "--compile-mode", "reduce-overhead",
                            "--no-layout-optimization"])["rows"]
    # without --settings: T2 B128 channels-last (its target) only for ours and the
    # floor, the reference only at T2 B128 NCHW; the slowest to compile start first
    assert [(c[c.index("--impls") + 1], c[c.index("--settings") + 1]) for c in seen["commands"]] == (
        [("reference", "t2b128"), ("spikingjelly", "t4b64"), ("spikingjelly", "t2b128")]
        + [(impl, setting) for impl in ("mpdagl", "ann") for setting in ("t4b64", "t2b128", "t2b128cl")])
    assert seen["jobs"] == 3
    for command in seen["commands"]:
        assert command[:3] == [sys.executable, "-m", "bench.train_step"] and "--jobs" not in command
        assert command[command.index("--compile-mode") + 1] == "reduce-overhead"
        assert "--no-layout-optimization" in command and "--full" not in command and "--batch" not in command
    assert [(r["impl"], r["T"], r["layout"]) for r in rows] == (
        [(impl, *setting) for impl in ("ann", "mpdagl") for setting in
         ((4, "channels_last"), (2, "nchw"), (2, "channels_last"))]
        + [("reference", 2, "nchw"), ("spikingjelly", 4, "channels_last"), ("spikingjelly", 2, "nchw")])
    assert [r.get("vs_ann") for r in rows[:7]] == [1.0] * 3 + [1.1] * 3 + [2.0]
    assert rows[-1]["note"] == "failed: its process exited with status 1: boom" and "ms" not in rows[-1]
    # --full: a process per layout and dtype too
    train_step.main(["--jobs", "2", "--device", "cpu", "--full", "--impls", "mpdagl", "--settings", "t4b64"])
    assert sorted((c[c.index("--layout") + 1], c[c.index("--dtype") + 1]) for c in seen["commands"]) == [
        ("channels_last", "bf16"), ("channels_last", "fp32"), ("nchw", "bf16"), ("nchw", "fp32")]


@pytest.mark.slow
def test_train_step_process_waits_for_its_turn_before_timing(tmp_path):
    """A process started by --jobs's parent compiles its step, says so, and times nothing until
    its turn (given here before it starts)."""
    (tmp_path / "go").touch()
    rows = bench("train_step", "--settings", "t2b128", "--batch", "2", "--dtype", "fp32", "--no-compile",
                 "--impls", "ann", "--warmup", "0", "--repeats", "1", "--turn", str(tmp_path),
                 json_out=tmp_path / "t.json")["rows"]
    assert (tmp_path / "ready").exists() and rows[0]["ms"] > 0 and rows[0]["compile_s"] > 0


@pytest.mark.slow


def test_spikingjelly_logging_no_longer_breaks_the_graph(monkeypatch):
    """SpikingJelly logs through loguru's global logger; with loguru's default sink a logger call
    reads the caller's frame (sys._getframe), which dynamo cannot trace: a graph break per call.
    After `prepare_spikingjelly` info/debug calls return first and warnings still print."""
    loguru = pytest.importorskip("loguru")
    monkeypatch.syspath_prepend(str(ROOT))
    import torch

    from bench.common import prepare_spikingjelly

    def neuron(x):
        loguru.logger.info("plan {}", 1)
        return x * 2

    def graph_breaks():
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        torch.compile(neuron, backend="eager")(torch.randn(3))
        return sum(torch._dynamo.utils.counters["graph_break"].values())

    try:
        assert graph_breaks() == 1
        prepare_spikingjelly(torch.nn.Linear(1, 1), torch.float32, torch.device("cpu"))
        assert graph_breaks() == 0
    finally:
        loguru.logger.remove()
        loguru.logger.add(sys.stderr)  # loguru's default sink back for the rest of the session


@pytest.mark.slow


def test_spikingjelly_state_is_reset_outside_the_compiled_step(monkeypatch):
    """SpikingJelly's reset deep-copies each neuron's initial state, and torch 2.11's dynamo (the
    GPU image's) cannot trace copy.deepcopy: a reset inside the compiled network broke its graph
    at every neuron (this torch traces it). The stand-in here is a deepcopy dynamo must not
    trace. The benchmark's network has no reset inside; its step resets before calling it."""
    pytest.importorskip("spikingjelly")
    pytest.importorskip("loguru")
    monkeypatch.syspath_prepend(str(ROOT))
    import copy
    import types

    from spikingjelly.activation_based import base

    from bench.common import reset_spikingjelly, spikingjelly_plif
    from bench.train_step import build

    monkeypatch.setattr(base, "copy", types.SimpleNamespace(deepcopy=torch._dynamo.disable(copy.deepcopy)))

    def graph_breaks(module, x, reset_outside):
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        compiled = torch.compile(module, backend="eager")
        for _ in range(2):  # the second call resets a state the first left as a tensor
            if reset_outside:
                reset_spikingjelly(module)
            compiled(x)
        return sum(torch._dynamo.utils.counters["graph_break"].values())

    class ResetInside(torch.nn.Module):  # the benchmark's former neuron
        def __init__(self):
            super().__init__()
            self.node = spikingjelly_plif()

        def forward(self, x):
            self.node.reset()
            return self.node(x)

    try:
        assert graph_breaks(ResetInside(), torch.randn(2, 3, 4), reset_outside=False) > 0  # the stand-in bites
        net = build("spikingjelly", 2, torch.device("cpu"))
        assert graph_breaks(net, torch.randn(1, 3, 32, 32), reset_outside=True) == 0
    finally:
        import loguru

        loguru.logger.remove()
        loguru.logger.add(sys.stderr)


def test_spikingjelly_plan_for_bf16_spikes_is_built_before_compiling(monkeypatch):
    """Under bf16 autocast SpikingJelly's PLIF looks up an execution plan keyed by the spike dtype
    (the input's: bf16 out of batch norm); a plan missing there is built with device queries and
    logging, untraceable for dynamo. `prepare_spikingjelly` must leave nothing to build. The node's
    own lookup runs on fake CUDA tensors and stops at the plan, as this machine may have no GPU."""
    pytest.importorskip("spikingjelly")
    pytest.importorskip("loguru")
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setenv("SJ_PLIF_CUDA_IMPLEMENTATION", "triton")
    import torch
    from spikingjelly._ops import triton_layout
    from spikingjelly._ops.plif import triton_precision
    from spikingjelly.activation_based import functional
    from torch._subclasses.fake_tensor import FakeTensorMode

    from bench.common import prepare_spikingjelly, spikingjelly_plif

    built, plans_used = [], []
    monkeypatch.setattr(triton_layout, "_TRITON_NEURON_EXECUTION_PLANS", {})
    monkeypatch.setattr(triton_layout, "_make_triton_neuron_execution_plan",
                        lambda **key: built.append(key) or f"plan {len(built)}")

    def stop_at_launch(x_seq, v, r_tau, plan, **options):
        plans_used.append(plan)
        raise InterruptedError

    monkeypatch.setattr(triton_precision, "_multistep_plif_mp_with_plan", stop_at_launch)
    node = spikingjelly_plif()
    device = torch.device("cuda", 0)
    try:
        prepare_spikingjelly(node, torch.bfloat16, device)
        assert len(built) == 1
        with FakeTensorMode(allow_non_fake_inputs=True), pytest.raises(InterruptedError):
            x = torch.empty(4, 2, 3, device=device, dtype=torch.bfloat16)
            storage, forward, backward = node._neuron_precision
            # the call ParametricLIFNode.multi_step_forward makes
            functional.plif_multi_step(x, torch.empty(2, 3, device=device, dtype=storage), node.w,
                                       node.decay_input, node.v_threshold, node.v_reset,
                                       node.surrogate_function, node.detach_reset, False,
                                       neuron_storage=storage, neuron_fwd=forward, neuron_bwd=backward)
        assert plans_used == ["plan 1"] and len(built) == 1
    finally:
        import loguru

        loguru.logger.remove()
        loguru.logger.add(sys.stderr)


def test_host_profile_families(monkeypatch):
    """Host events of a profiled CUDA step land in the family that explains them."""
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.train_step import summarize_host

    events = [("cudaLaunchKernel", 400.0, 20), ("cuLaunchKernelEx", 300.0, 10), ("cudaMemsetAsync", 20.0, 2),
              ("_backward_kernel_1", 900.0, 6), ("triton_poi_fused_add_3", 100.0, 4),
              ("## Call CompiledFxGraph fabc ##", 700.0, 2), ("aten::convolution_backward", 250.0, 2),
              ("Optimizer.step#SGD.step", 50.0, 2), ("torch::autograd::AccumulateGrad", 30.0, 6), ("cudnn", 1.0, 2)]
    host = summarize_host(events, steps=2)
    families = {name: f["ms"] for name, f in host["families"].items()}
    assert families == {"CUDA API": 0.36, "our kernel launches": 0.45, "inductor kernel launches": 0.05,
                        "compiled graph": 0.35, "aten": 0.125, "optimizer": 0.025, "autograd": 0.015,
                        "other": 0.0005}
    assert host["launch_calls"] == 15 and host["families"]["CUDA API"]["events"] == 16
    assert host["top"][0] == {"event": "_backward_kernel_1", "ms": 0.45, "per_step": 3}


@pytest.mark.slow
def test_data_and_probe_benchmarks(tmp_path):
    rows = bench("data", "--synthetic", "256", "--batch-size", "64", "--epochs", "1", json_out=tmp_path / "d.json")["rows"]
    assert rows[0]["images"] == 256 and rows[0]["augmentation"] == "cifar" and rows[-1]["split"] == "test"
    rows = bench("data", "--synthetic", "256", "--batch-size", "64", "--epochs", "1", "--augment-chunks", "64", "128",
                 "--compare-interleave", json_out=tmp_path / "d.json")["rows"]
    assert [(r["split"], r.get("chunk"), r.get("interleaved"), r["images"]) for r in rows] == [
        ("train (augmented)", chunk, interleaved, 256) for chunk in (64, 128)
        for interleaved in ("yes", "no")] + [("test", None, None, 256)]
    if not torch.cuda.is_available():  # the stand-in step is a GPU kernel
        done = subprocess.run([sys.executable, "-m", "bench.data", "--synthetic", "64", "--step-ms", "5"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode != 0 and "--step-ms needs a CUDA device" in done.stderr
    assert 0 < bench("probe", "--images", "256", "--probe-size", "16", json_out=tmp_path / "p.json")["overhead"]


def test_data_overlap_share(monkeypatch):
    """bench.data's overlap: 1 when augmentation and steps took as long together as the longer
    alone, 0 when as long as both in series, whichever is shorter."""
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.data import overlap

    assert overlap(2.0, 5.0, 5.0) == 1.0 and overlap(2.0, 5.0, 7.0) == 0.0
    assert overlap(5.0, 2.0, 6.0) == 0.5 and overlap(4.0, 4.0, 6.0) == 0.5


@pytest.mark.slow
def test_register_report(tmp_path):
    rows = bench("registers", "--timesteps", "4", "--layers", "head", json_out=tmp_path / "r.json")["rows"]
    assert {r["kernel"] for r in rows} == {"stats", "finalize", "forward", "backward sums", "backward dx",
                                           "backward total"}
    assert all(r["registers"] > 0 and r["spill_bytes"] == 0 for r in rows)  # no kernel spills
    # inside compiled graphs inductor's static launcher takes every kernel (no Triton launcher)
    assert all(r["static_launch"] == "yes" for r in rows)


@pytest.mark.slow
def test_dispatch_benchmark(tmp_path):
    """Triton's launch path against the direct launcher, kernels compiled for sm_90 and their
    launchers recording (no GPU): one variant per kernel launch of the layer (the backward
    kernel twice) ends up in the direct launchers' caches."""
    rows = bench("dispatch", "--depth", "2", json_out=tmp_path / "d.json")["rows"]
    assert [r["launch"] for r in rows] == ["Triton's kernel[grid]", "direct launcher", "saved per launch"]
    assert rows[0]["layer_us"] > 0 and rows[1]["layer_us"] > 0
    assert rows[1]["variants"] == 6


@pytest.mark.slow
def test_host_cost_benchmark(tmp_path):
    rows = bench("host", "--depth", "2", json_out=tmp_path / "h.json")["rows"]
    assert [r["mode"] for r in rows] == ["eager", "torch.compile"]
    # training: statistics, their merge, forward, backward sums, their total, backward dx
    assert all(r["triton_launches"] == 6 and r["host_us"] > 0 for r in rows)
    # eager, the statistics kernel updates the running statistics: no PyTorch kernel at all
    assert rows[0]["torch_kernels"] == 0 and rows[0]["ops"] == {}
    assert 0 < rows[0]["forward_us"] < rows[0]["host_us"]


def test_suite_runs_every_part_and_times_it(tmp_path, monkeypatch):
    """`python -m bench.all` wiring: each part runs once, in a process of its own, with its JSON
    under --out (the training step compiling in --jobs processes first), and the wall time of
    each part and of the whole suite lands in suite.json; a part that fails is named. The parts
    run at GPU sizes, so the processes are stubbed here; each part runs alone in the tests above."""
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import all as suite

    commands = []

    def run(command):
        commands.append([sys.executable, "-m", *command])
        return 1 if command[0] == "bench.data" else 0

    monkeypatch.setattr(suite, "run_part", run)
    payload = suite.main(["--out", str(tmp_path), "--jobs", "3"])
    assert [command[:3] for command in commands] == [[sys.executable, "-m", f"bench.{name}"]
                                                     for name in ("layer", "train_step", "data", "probe")]
    for command in commands:
        assert command[command.index("--json") + 1].startswith(str(tmp_path))
    assert [c[c.index("--jobs") + 1] for c in commands[:2]] == ["3", "3"]  # layer, train_step
    rows = payload["rows"]
    assert [row["part"] for row in rows] == ["layer", "train_step", "data", "probe", "suite"]
    assert [row["note"] for row in rows] == [None, None, "exit status 1", None, None]
    assert rows[-1]["seconds"] == sum(row["seconds"] for row in rows[:-1])
    assert json.loads((tmp_path / "suite.json").read_text())["rows"] == rows


@pytest.mark.slow
def test_tune_calls_the_launchers_as_they_are(monkeypatch):
    """`bench.tune` runs only on a GPU: here its kernel timings and host-cost calls run once each
    through the interpreter (timers stubbed), so a launcher signature change cannot break it unseen."""
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

    # the host-cost rows: each call runs once (host_us stubbed), the compiled layer on each route
    ran = []
    monkeypatch.setattr(tune.host, "host_us", lambda fn, device: (fn(), ran.append(1), 1.0)[-1])
    rows = tune.host_overheads(torch.device("cpu"))
    assert len(ran) == len(rows) == 10 and all(row["host_us"] == 1.0 for row in rows)


@pytest.mark.skipif(torch.version.cuda is not None, reason="bench.launches stands in for CUDA: CPU-only torch")
@pytest.mark.slow
def test_launches_of_a_compiled_stem_layer(tmp_path):
    """Inductor's generated CUDA code for a neuron whose input is the same at every step, then a
    conv: our six launches and, around them, only the running-statistics update and the conv's
    bias (no copy of the input over T, no fill or clone kernels, dx summed over T by our kernel)."""
    graphs = bench("launches", "--impl", "layer", json_out=tmp_path / "l.json")["graphs"]
    assert graphs["forward"]["kernels"] == {"_stats_partial_kernel": 1, "_stats_finalize_kernel": 1,
                                            "_forward_kernel": 1, "triton_for_fused": 1,
                                            "extern convolution": 1, "triton_poi_fused_convolution_view": 1}
    assert graphs["backward"]["kernels"] == {"_backward_kernel": 2, "_sum_partials_kernel": 1,
                                             "extern convolution_backward": 1}


def test_launches_refuses_a_cuda_build_of_torch(monkeypatch, capsys):
    """On a CUDA build with no GPU, dynamo and fake tensors start the CUDA runtime and fail deep
    inside (seen with torch 2.11+cu130): the tool says what it needs instead."""
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import launches

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    with pytest.raises(SystemExit):
        launches.main(["--impl", "layer"])
    assert "needs a CPU-only build of torch" in capsys.readouterr().err


@pytest.mark.slow
def test_graph_breaks_are_counted_with_their_reasons(monkeypatch):
    """`python -m bench.graph_breaks`: our ResNet-19 compiles as one graph (here on the CPU, on the
    reference backend); a network that breaks is reported with the break and where it happened."""
    import torch

    monkeypatch.syspath_prepend(str(ROOT))
    from bench import graph_breaks

    options = ["--device", "cpu", "-T", "2", "-B", "2", "--dtype", "fp32"]
    rows = graph_breaks.main([*options, "--impls", "mpdagl"])["rows"]
    assert (rows[0]["graphs"], rows[0]["breaks"], rows[0]["reasons"]) == (1, 0, [])

    class Breaking(torch.nn.Module):
        def forward(self, x):
            x = x + 1
            print("a Python side effect")  # dynamo cannot put this in a graph
            return x * 2

    monkeypatch.setattr(graph_breaks, "build", lambda *args: Breaking())
    (row,) = graph_breaks.main(["--device", "cpu", "--impls", "ann", "--dtype", "fp32"])["rows"]
    assert row["graphs"] == 2 and row["breaks"] == 1
    assert "builtin operator `print`" in row["reasons"][0]["reason"]
    assert any("test_bench.py" in frame for frame in row["reasons"][0]["where"])


@pytest.mark.slow


def test_inference_benchmark(tmp_path):
    rows = bench("inference", "--size", "8", "--batch-size", "2", "--warmup", "0", "--repeats", "1",
                 json_out=tmp_path / "i.json")["rows"]
    assert [r["impl"] for r in rows] == ["fold", "affine", "op-eval", "train-fwd", "ann-eval"]
    assert all(r["images_per_s"] > 0 for r in rows) and rows[-1]["vs_ann"] == 1.0
