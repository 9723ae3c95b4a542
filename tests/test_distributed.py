"""Several processes (gloo on the CPU): synchronized tdBN statistics and DistributedDataParallel."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

import mpdagl_triton as M
from mpdagl_triton import cli, models
from support.runs import assert_same_run

WORLD = 2


def _init(rank: int, store: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)


def _full_batch_case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 4, 5, 6, 7, generator=g, dtype=torch.float64) * 1.5 + 0.3
    gamma = torch.rand(5, generator=g, dtype=torch.float64) + 0.5
    beta = torch.randn(5, generator=g, dtype=torch.float64) * 0.3
    grad = torch.randn(x.shape, generator=g, dtype=torch.float64)
    return x, gamma, beta, grad


def _op_outputs(x, gamma, beta, grad, backend, sync):
    x = x.clone().requires_grad_()
    gamma, beta = gamma.clone().requires_grad_(), beta.clone().requires_grad_()
    rho = torch.tensor(-0.8, dtype=torch.float64, requires_grad=True)
    rm, rv = torch.zeros(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64)
    s = M.tdbn_plif(x, gamma, beta, rho, running_mean=rm, running_var=rv, backend=backend,
                    sync_stats=sync)
    s.backward(grad)
    return {"spikes": s.detach(), "dx": x.grad, "dgamma": gamma.grad, "dbeta": beta.grad,
            "drho": rho.grad, "running_mean": rm, "running_var": rv}


def _sync_worker(rank: int, store: str, backend: str, result: str) -> None:
    _init(rank, store)
    x, gamma, beta, grad = _full_batch_case()
    half = x.shape[1] // WORLD
    part = slice(rank * half, (rank + 1) * half)
    out = _op_outputs(x[:, part], gamma, beta, grad[:, part], backend, sync=True)
    for key in ("dgamma", "dbeta", "drho"):  # per-process parameter gradients add up (DDP averages them)
        dist.all_reduce(out[key])
    save_file({k: v.contiguous() for k, v in out.items()}, f"{result}.{rank}")
    dist.destroy_process_group()


INTERPRETED = pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="gloo runs the Triton kernels on CPU tensors, through the interpreter, which is off on a GPU machine")


@pytest.mark.parametrize("backend", [pytest.param("triton", marks=INTERPRETED), "torch"])
@pytest.mark.slow
def test_sync_bn_equals_one_process_on_the_whole_batch(tmp_path, backend):
    mp.spawn(_sync_worker, args=(str(tmp_path / "store"), backend, str(tmp_path / "out")), nprocs=WORLD)
    x, gamma, beta, grad = _full_batch_case()
    full = _op_outputs(x, gamma, beta, grad, backend, sync=False)
    half = x.shape[1] // WORLD
    for rank in range(WORLD):
        got = load_file(f"{tmp_path / 'out'}.{rank}")
        part = slice(rank * half, (rank + 1) * half)
        torch.testing.assert_close(got["running_mean"], full["running_mean"], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got["running_var"], full["running_var"], rtol=1e-12, atol=1e-12)
        assert torch.equal(got["spikes"], full["spikes"][:, part])
        torch.testing.assert_close(got["dx"], full["dx"][:, part], rtol=1e-9, atol=1e-12)
        for key in ("dgamma", "dbeta", "drho"):
            torch.testing.assert_close(got[key], full[key], rtol=1e-9, atol=1e-12)


def _ddp_step_worker(rank: int, store: str, result: str) -> None:
    _init(rank, store)
    torch.manual_seed(0)
    net = models.create("tiny", 10, 2, in_channels=1, input_size=8)
    net.set_runtime_options(sync_stats=True)
    ddp = torch.nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    images = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(2))
    share = slice(rank * 4, (rank + 1) * 4)
    loss = torch.nn.functional.cross_entropy(ddp(images[share]), labels[share])
    loss.backward()
    opt.step()
    flat = torch.cat([p.detach().flatten() for p in net.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(WORLD)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        save_file({f"rank{i}": t for i, t in enumerate(gathered)}, result)
    # both ranks done, and DDP's reducer (which holds the group) gone, before the group is torn
    # down: otherwise a rank could abort at exit ("terminate called without an active exception")
    dist.barrier()
    del ddp
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_agree_and_match_one_process(tmp_path):
    mp.spawn(_ddp_step_worker, args=(str(tmp_path / "store"), str(tmp_path / "w")), nprocs=WORLD)
    saved = load_file(tmp_path / "w")
    ranks = [saved[f"rank{i}"] for i in range(WORLD)]
    assert torch.equal(ranks[0], ranks[1])  # both ranks hold the same weights after the step
    torch.manual_seed(0)
    net = models.create("tiny", 10, 2, in_channels=1, input_size=8)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    images = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(2))
    torch.nn.functional.cross_entropy(net(images), labels).backward()
    opt.step()
    single = torch.cat([p.detach().flatten() for p in net.parameters()])
    torch.testing.assert_close(ranks[0], single, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_torchrun_train_command(tmp_path, capsys):
    """Batch 400: the 360 test images make one batch, so process 1 evaluates none (evaluating
    through DDP, whose first forward in eval mode broadcasts buffers, hung there). The combined
    test accuracy is that of the model rank 0 saved, evaluated alone."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD),
           "-m", "mpdagl_triton.cli", "train", "--epochs", "1", "--batch-size", "400", "--sync-bn",
           "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                           start_new_session=True)
    try:
        stdout, stderr = run.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)  # torchrun's workers too: a hang leaves nothing behind
        raise
    assert run.returncode == 0, stderr[-3000:]
    assert stdout.count("final test accuracy") == 1  # only rank 0 reports
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["world_size"] == WORLD and state["config"]["sync_bn"] is True
    assert M.load(out).num_classes == 10
    assert cli.main(["eval", "--checkpoint", str(out), "--batch-size", "400", "--device", "cpu"]) == 0
    assert f"test accuracy {rows[0]['test_acc']:.4f}, loss {rows[0]['test_loss']:.4f}" in capsys.readouterr().out


def torchrun(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """``torchrun --standalone ARGS`` on the CPU, its workers killed with it on a timeout."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                           start_new_session=True)
    try:
        stdout, stderr = run.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)
        raise
    return subprocess.CompletedProcess(cmd, run.returncode, stdout, stderr)


@pytest.mark.slow
def test_elastic_restarts_after_sigterm_and_sigkill_end_bit_identical(tmp_path):
    """torchrun --max-restarts: a preempted rank (SIGTERM) stops the group at the step all agree
    on, with one resume point; the restarted group continues from it, loses rank 1 to SIGKILL
    mid-epoch, restarts again from the last mid-epoch point and ends with the weights and metrics
    of a 2-process run never interrupted."""
    runner = Path(__file__).parent / "support" / "fault_runner.py"
    train_args = ["--epochs", "1", "--device", "cpu", "--save-every", "1e-9", "--resume", "auto"]
    full = torchrun(["--nproc_per_node", str(WORLD), "-m", "mpdagl_triton.cli", "train", *train_args,
                     "--out", str(tmp_path / "full")])
    assert full.returncode == 0, full.stderr[-3000:]
    # attempt 0: rank 1 gets SIGTERM in step 5, all stop after step 10 (they agree every 10 steps);
    # attempt 1 resumes there and writes a point at step 20; rank 1 dies in step 21 (its 11th);
    # attempt 2 resumes from step 20, the last point the group agreed on, and ends the epoch
    out = tmp_path / "run"
    run = torchrun(["--max-restarts", "3", "--nproc_per_node", str(WORLD), str(runner), "plan",
                    "0/1/term/5,1/1/kill/11", *train_args, "--out", str(out)])
    assert run.returncode == 0, run.stderr[-3000:]
    assert (f"mpdagl train: stopped by SIGTERM; {out} holds step 10 (epoch 1, batch 10 of 22): continue with"
            in run.stderr), run.stderr[-3000:]
    assert f"resuming {out} at step 10 (epoch 1, batch 10 of 22)" in run.stdout
    assert f"resuming {out} at step 20 (epoch 1, batch 20 of 22)" in run.stdout
    assert_same_run(out, tmp_path / "full")


def test_a_run_destroys_the_process_group_it_created(tmp_path):
    """Left to the interpreter's exit, gloo's teardown sometimes aborted a torchrun process
    ("terminate called without an active exception"): a run destroys the group it created, and
    leaves alone one its caller made."""
    from mpdagl_triton.train import Distributed

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        Distributed(0, 1, owns_group=False).leave()
        assert dist.is_initialized()
        Distributed(0, 1, owns_group=True).leave()
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
