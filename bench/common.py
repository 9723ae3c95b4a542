"""Timing, memory and reporting helpers shared by the benchmarks."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ROOT = Path(__file__).resolve().parents[1]  # benchmarks run as `python -m bench.<name>` from here


def share_of_cores(jobs: int) -> dict[str, str]:
    """The environment of one of ``jobs`` parallel compiling processes: inductor's compile workers
    split the cores between them (each process would otherwise start one worker per core, and
    every worker imports torch), unless the caller chose a number."""
    env = dict(os.environ)
    env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))
    return env


#: benchmark processes alive at once in ``compile_then_measure`` (compiled, waiting for their turn),
#: at most, and what each may hold: a ResNet-19 step's process had ~3 GiB of host memory after
#: compiling, and holds a CUDA context, its step's memory and the allocator's cache on the GPU
MAX_WAITING = 12
HOST_GIB_PER_PROCESS, GPU_GIB_PER_PROCESS = 4, 6
TURN_POLL_S = 0.01


def processes_that_fit() -> int:
    """How many benchmark processes may wait at once on this machine (``MAX_WAITING`` at most)."""
    fit = MAX_WAITING
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        fit = min(fit, os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // (HOST_GIB_PER_PROCESS << 30))
    if torch.cuda.is_available():
        fit = min(fit, torch.cuda.get_device_properties(0).total_memory // (GPU_GIB_PER_PROCESS << 30))
    return max(1, int(fit))


def wait_for_turn(folder: str | None) -> None:
    """In a process started by ``compile_then_measure``, between compiling and timing: say that
    this process is done compiling, then wait until the parent gives it its turn to measure.
    Nothing when the process was not started that way (``folder`` None)."""
    if folder is None:
        return
    parent = os.getppid()
    Path(folder, "ready").touch()
    while not Path(folder, "go").exists():
        if os.getppid() != parent:  # orphaned: the turn will never come
            raise SystemExit("the benchmark that started this process has ended")
        time.sleep(TURN_POLL_S)


def compile_then_measure(commands: list[list[str]], jobs: int, waiting: int | None = None,
                         on_result: Callable[[int, dict | str], None] | None = None) -> tuple[list[dict | str], float]:
    """Run benchmark processes that compile in parallel, then measure one at a time.

    Each command is a benchmark that accepts ``--turn DIR --json FILE``: it compiles, calls
    ``wait_for_turn(DIR)``, measures, writes its JSON and exits. Up to ``jobs`` processes compile at
    once (inductor's compile workers share the cores, ``share_of_cores``); a process that has
    compiled waits, holding what it compiled. Once none is compiling, each measures in turn, alone
    on the machine: timings do not share the GPU or the host with a compile, and no process loads
    its compiled code again (from torch.compile's caches that takes 2-29 s per step on an H100).
    At most ``waiting`` processes are alive at once (default: ``processes_that_fit()``, 12 on an
    H100 machine); more commands run in groups of that size.

    Returns each command's JSON payload, in the commands' order, or a line saying why it has none,
    and the seconds spent before the measuring (compiling, in all groups). ``on_result(i, result)``
    gets each as soon as it is measured (a run cut short keeps what it measured)."""
    env = share_of_cores(jobs)
    waiting = waiting or processes_that_fit()
    results: list[dict | str] = ["not run"] * len(commands)
    compile_s = 0.0
    with tempfile.TemporaryDirectory(prefix="bench-turns-") as tmp:
        folders = [Path(tmp, str(i)) for i in range(len(commands))]
        processes: dict[int, subprocess.Popen] = {}

        def compiling() -> list[int]:
            return [i for i, p in processes.items() if p.poll() is None and not (folders[i] / "ready").exists()]

        try:
            for first in range(0, len(commands), waiting):
                group = list(range(first, min(first + waiting, len(commands))))
                started, pending = time.perf_counter(), list(group)
                while pending or compiling():
                    while pending and len(compiling()) < jobs:
                        i = pending.pop(0)
                        folders[i].mkdir()
                        with open(folders[i] / "stdout", "w") as out, open(folders[i] / "stderr", "w") as err:
                            processes[i] = subprocess.Popen(
                                [*commands[i], "--turn", str(folders[i]), "--json", str(folders[i] / "out.json")],
                                stdout=out, stderr=err, env=env, cwd=ROOT)
                    time.sleep(TURN_POLL_S)
                compile_s += time.perf_counter() - started
                for i in group:
                    (folders[i] / "go").touch()
                    status = processes[i].wait()
                    payload = folders[i] / "out.json"
                    if status == 0 and payload.exists():
                        results[i] = json.loads(payload.read_text())
                    else:
                        stderr = (folders[i] / "stderr").read_text().strip()
                        print(f"{' '.join(commands[i][2:])} failed:\n{stderr[-2000:]}", file=sys.stderr)
                        last = (stderr.splitlines() or ["no output"])[-1]
                        results[i] = f"its process exited with status {status}: {last[:120]}"
                    if on_result is not None:
                        on_result(i, results[i])
        finally:  # interrupted or failed here: no process may wait for a turn that never comes
            for process in processes.values():
                if process.poll() is None:
                    process.kill()
                    process.wait()
    return results, compile_s


def layer_stack_parser(doc: str) -> argparse.ArgumentParser:
    """Options of the benchmarks that time a stack of small layers on the host."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--depth", type=int, default=8, help="layers in the stack")
    parser.add_argument("--json")
    return parser


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def elapsed_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call of ``fn`` until its work is done, in milliseconds (CUDA events on a GPU)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of ``fn`` in milliseconds, each call waited for (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    return statistics.median(elapsed_ms(fn, device) for _ in range(repeats))


def back_to_back_ms(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int,
                    windows: int = 3) -> float:
    """Milliseconds per call of ``fn`` called ``repeats`` times in a row, nothing waiting between
    calls, as a training loop calls its step: the host issues one call while the GPU still runs
    the previous one (``time_ms`` instead waits for each call to finish). The median over
    ``windows`` such runs; CUDA events on a GPU."""
    def in_a_row():
        for _ in range(repeats):
            fn()

    for _ in range(warmup):
        fn()
    synchronize(device)
    return statistics.median(elapsed_ms(in_a_row, device) / repeats for _ in range(windows))


def cuda_graph_ms(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float | str | None:
    """Median time of ``fn`` captured once as a CUDA graph and replayed ten times in a row: its GPU
    work without the host's launch costs (what ``torch.compile(mode="reduce-overhead")`` gets).
    None off CUDA; a string saying why when ``fn`` cannot be captured."""
    if device.type != "cuda":
        return None
    try:
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):  # warm up off the default stream, as capture requires
            for _ in range(3):
                fn()
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
    except Exception as exc:
        return f"capture failed: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
    replays = 10  # back to back, so that the GPU never waits for the host between them

    def replay():
        for _ in range(replays):
            graph.replay()

    return time_ms(replay, device, warmup, repeats) / replays


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak allocated bytes above what was allocated before ``fn`` ran (CUDA only)."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def copy_bandwidth_gbs(device: torch.device, n_bytes: int = 1 << 30) -> float | None:
    """Achievable HBM bandwidth: bytes read + written by a large device copy, per second."""
    if device.type != "cuda":
        return None
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, warmup=3, repeats=20)
    return 2 * n_bytes / (ms * 1e-3) / 1e9


def environment(device: torch.device) -> dict:
    info = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def print_table(rows: list[dict], columns: list[str]) -> None:
    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
        return str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def write_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {path}")


def spikingjelly_plif(tau: float = 0.2, vth: float = 0.5) -> torch.nn.Module:
    """SpikingJelly's multi-step PLIF node with our dynamics: hard reset to 0 at ``vth``, decay
    ``tau``. SpikingJelly decays by sigmoid(w) = 1 / tau_sj; ours keeps tau * V, so
    tau_sj = 1 / (1 - tau). Its Triangle surrogate where it has one, else PiecewiseQuadratic."""
    from spikingjelly.activation_based import neuron, surrogate

    shape = getattr(surrogate, "Triangle", None) or getattr(surrogate, "PiecewiseQuadratic")
    return neuron.ParametricLIFNode(init_tau=1.0 / (1.0 - tau), decay_input=False, v_threshold=vth,
                                    v_reset=0.0, surrogate_function=shape(), detach_reset=False,
                                    step_mode="m")


def reset_spikingjelly(net: torch.nn.Module) -> None:
    """Every SpikingJelly neuron's state back to its initial value, as its users do before each
    batch (``functional.reset_net``), outside the compiled model: its reset deep-copies the initial
    value, which dynamo could not trace on torch 2.11 (a graph break per neuron, then each
    block's frame recompiled up to dynamo's limit and run eagerly, 69 ms per ResNet-19 step)."""
    from spikingjelly.activation_based import functional

    functional.reset_net(net)


def prepare_spikingjelly(net: torch.nn.Module, dtype: torch.dtype, device: torch.device) -> None:
    """Give SpikingJelly its best run under torch.compile (import it first).

    Its neurons log through loguru's global logger (disabled for its namespace, but with loguru's
    default sink still installed); a logger call gets its caller's frame with ``sys._getframe``
    before checking that, which dynamo cannot trace, so every neuron call broke the compiled graph
    (55.8 ms per ResNet-19 step on an H100, frames falling back to eager at dynamo's recompile limit).
    Sinks from WARNING up make info/debug calls return before that. Its Triton PLIF also refuses a
    bf16/fp16 state under autocast (falling back to its reference, which
    SJ_PLIF_CUDA_IMPLEMENTATION=triton forbids) unless each node is given a storage precision, as
    SpikingJelly's precision converter does. That path looks its execution plan up by (device,
    storage, compute dtypes, spike dtype = the input's dtype, ...) and builds a missing one with
    device queries and logging, which dynamo cannot trace: the plan for spikes in ``dtype`` (what
    batch norm hands the node under autocast) is built here, before anything is compiled."""
    import sys

    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    if device.type != "cuda" or dtype == torch.float32:
        return
    from spikingjelly._ops.triton_layout import _prepare_triton_neuron_execution_plan
    from spikingjelly.activation_based.neuron import ParametricLIFNode

    _prepare_triton_neuron_execution_plan(neuron_type="plif", device=device, storage_dtype=dtype,
                                          spike_dtype=dtype)
    for module in net.modules():
        if isinstance(module, ParametricLIFNode):
            module._neuron_precision = (dtype, "fp32", "fp32")
