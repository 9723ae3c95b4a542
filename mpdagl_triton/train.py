"""The training loop behind ``mpdagl train``; reads top to bottom.

Output folder:
    config.json, model.safetensors     the model of the last completed epoch (``mpdagl_triton.load(DIR)``)
    trainer_state.safetensors          the resume point: everything a resume needs (model, optimizer,
                                       scheduler, RNG states; mid-epoch, the loader's generators and the
                                       epoch's running sums; the JSON state in the safetensors metadata)
    trainer_state.previous.safetensors the resume point before it, used when the latest is unreadable
    trainer_state.json                 the latest point's JSON state, for people
    metrics.jsonl                      one line per completed epoch

Resume points are written at the end of every epoch, every ``--save-every`` minutes mid-epoch, and
at SIGTERM / SIGINT, after the step in progress. Each file is replaced atomically; the
trainer state alone is a resume point, so a crash between two writes can never pair weights with
another step's optimizer state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from tqdm import tqdm

from filelock import FileLock, Timeout

from mpdagl_triton import analysis, data, events, models
from mpdagl_triton._version import __version__
from mpdagl_triton.errors import InvalidInput, Unavailable
from mpdagl_triton.runtime import cpu_threads, resolve_device
from mpdagl_triton.checkpoint import (CheckpointError, atomic_write_text, load_tensors, read_jsonl,
                                      save_tensors)
from mpdagl_triton.ops import compile_options
from mpdagl_triton.surrogates import SURROGATES, WIDTH_RULES

STATE_NAME = "trainer_state.safetensors"
PREVIOUS_STATE_NAME = "trainer_state.previous.safetensors"  # the point before, kept
STATE_JSON = "trainer_state.json"
METRICS_NAME = "metrics.jsonl"
LOCK_NAME = ".mpdagl-run.lock"  # held by a training run (hold_output_dir)


def option(default, help: str, *, choices: tuple = (), short: str | None = None,
           flag: str | None = None, resumable: bool = False):
    """A :class:`TrainConfig` field and its ``mpdagl train`` option in one place: ``help`` and
    ``choices`` feed the command line and validation, ``flag`` names the option when the field's
    name would not do, ``resumable`` marks what a resume may change."""
    return dataclasses.field(default=default, metadata={
        "help": help, "choices": tuple(choices), "short": short, "flag": flag, "resumable": resumable})


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


@dataclasses.dataclass
class TrainConfig:
    """One training run; its fields are the options of ``mpdagl train`` (with dashes there).

    Defaults are the digits recipe; :data:`RECIPES` holds the paper's. ``train(cfg)`` runs it.

    Example:
        >>> TrainConfig(epochs=3).arch
        'tiny'
    """

    dataset: str = option("digits", "digits (embedded), cifar10, cifar100, tiny-imagenet, cifar10-dvs, "
                                    "a Hub id (user/name) or a local folder; a named dataset brings its recipe")
    arch: str = option("tiny", "architecture: resnet19, resnet18, vggsnn, vgg13, tiny, or one of your own "
                               "registered by an --import module")
    imports: tuple[str, ...] = option((), "Python modules to import first: those that register your own "
                                          "architectures (models.register)", flag="--import",
                                      resumable=True)
    timesteps: int = option(2, "simulation timesteps T", short="-T")
    epochs: int = option(12, "epochs; the cosine schedule spans them", resumable=True)
    batch_size: int = option(64, "images per step (the global batch under torchrun)")
    lr: float = option(0.05, "peak learning rate (cosine decay to 0, stepped per epoch)")
    optimizer: str = option("sgd", "SGD (momentum 0.9) or Adam", choices=("sgd", "adam"))
    weight_decay: float = option(1e-4, "L2 weight decay on all parameters")
    loss: str = option("ce", "cross entropy on the mean over T, or TET (mean over t of CE at t)",
                       choices=("ce", "tet"))
    neuron: str = option("plif", "learnable decay (plif) or fixed decay (lif)", choices=("plif", "lif"))
    width_rule: str = option("mpdagl", "surrogate width rule (docs/method.md#width-rules)",
                             choices=WIDTH_RULES)
    surrogate: str = option("rect", "surrogate gradient shape (docs/method.md#surrogate-shapes)",
                            choices=SURROGATES)
    compile: bool = option(False, "torch.compile the model", resumable=True)
    compile_mode: str = option("default", "torch.compile mode (implies --compile); reduce-overhead "
                                          "replays each step as a CUDA graph", choices=COMPILE_MODES,
                               resumable=True)
    amp: str = option("off", "mixed precision (fp16 needs CUDA)", choices=("bf16", "fp16", "off"))
    channels_last: bool | None = option(None, "channels-last memory format (default: on CUDA)")
    device: str = option("auto", "cuda, cuda:N, cpu or auto (CUDA when available)", resumable=True)
    threads: int | None = option(None, "CPU threads (default: 1 for models under 1 M parameters, "
                                        "else one per core; OMP_NUM_THREADS wins)", resumable=True)
    seed: int = option(2025, "seed of initialisation, shuffling and augmentation")
    out: str = option("runs/digits", "output folder (default runs/<dataset>, or runs/<dataset>-N when "
                                     "that holds a run)", resumable=True)
    workers: int = option(0, "data-loading worker processes (CPU loading)", resumable=True)
    probe_size: int = option(128, "test images probed once per epoch for the per-layer statistics",
                             resumable=True)
    data_path: str | None = option(None, "read the dataset from this local folder (a Hub download; "
                                         "for cifar10-dvs the folder of per-class .aedat folders)",
                                   resumable=True)
    image_column: str | None = option(None, "image column of a Hub / local dataset")
    label_column: str | None = option(None, "label column of a Hub / local dataset")
    # which CIFAR10-DVS recordings train and which test (the release has no split); what each
    # choice is and where it comes from: the mpdagl_triton.events docstring
    dvs_split: str = option(events.DEFAULT_SPLIT, "cifar10-dvs train/test split: first90 (first 90 percent of "
                            "each class by file number train), tebn (files 0-99 test) or spikingjelly "
                            "(its split_to_train_test_set, 0.9 per class in file-name order)",
                            choices=events.SPLITS)
    dvs_frames: str = option(events.FRAME_RULES[0], "cifar10-dvs frames: spikingjelly (N // T events a frame in "
                             "file order, the rest in the last, as the authors' frames) or even (the rest "
                             "spread over the frames)", choices=events.FRAME_RULES)
    sync_bn: bool = option(False, "under torchrun: tdBN batch statistics over all processes")
    check_finite: bool = option(False, "stop with a clear error when an input holds NaN/Inf",
                                resumable=True)
    save_every: float = option(10.0, "minutes between mid-epoch resume points (0: only at epoch ends "
                                     "and at SIGTERM / SIGINT)", resumable=True)


#: The authors' recipes (docs/method.md#training-recipes); the command line overrides any field.
RECIPES: dict[str, dict] = {
    "digits": dict(dataset="digits", arch="tiny", timesteps=2, epochs=12, batch_size=64, lr=0.05,
                   optimizer="sgd", weight_decay=1e-4),
    "cifar10": dict(dataset="cifar10", arch="resnet19", timesteps=2, epochs=150, batch_size=100,
                    lr=0.1, optimizer="sgd", weight_decay=1e-4),
    "cifar100": dict(dataset="cifar100", arch="resnet19", timesteps=2, epochs=150, batch_size=100,
                     lr=0.1, optimizer="sgd", weight_decay=1e-4),
    "cifar10-dvs": dict(dataset="cifar10-dvs", arch="vggsnn", timesteps=10, epochs=150,
                        batch_size=100, lr=0.1, optimizer="sgd", weight_decay=5e-4),
    "tiny-imagenet": dict(dataset="tiny-imagenet", arch="vgg13", timesteps=4, epochs=150,
                          batch_size=100, lr=0.1, optimizer="sgd", weight_decay=1e-4),
}

#: optimizer settings that say how it steps, not what it computes: a resume keeps its own
IMPLEMENTATION_FLAGS = ("fused", "foreach", "capturable")

#: Fields a resumed run may change; every other one must match the checkpoint.
RESUMABLE_OVERRIDES = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata["resumable"])


class TrainingDiverged(Unavailable):
    """The loss became NaN or infinite."""


class Stopped(KeyboardInterrupt):
    """The run stopped at SIGTERM or SIGINT, after the step in progress, and wrote a resume point
    there (a KeyboardInterrupt, so that code which handles Ctrl-C handles it too)."""

    def __init__(self, signum: int, out: Path, point: str):
        super().__init__(f"stopped by {signal.Signals(signum).name}; {out} holds {point}")
        self.signum, self.out, self.point = signum, out, point

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number (143, 130)."""
        return 128 + self.signum


# ----------------------------------------------------------------------------------------------
# Set-up
# ----------------------------------------------------------------------------------------------


def validate(cfg: TrainConfig) -> None:
    """Reject a configuration before any work starts, naming the bad field."""
    if cfg.arch not in models.available():
        raise InvalidInput(models.unknown_architecture(cfg.arch))
    data.check_name(cfg.dataset)
    for name in ("timesteps", "epochs", "batch_size", "probe_size"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or value < 1:
            raise InvalidInput(f"{name} must be an integer >= 1, got {value!r}")
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise InvalidInput(f"lr must be a positive number, got {cfg.lr}")
    if cfg.weight_decay < 0:
        raise InvalidInput(f"weight_decay must be >= 0, got {cfg.weight_decay}")
    if cfg.workers < 0:
        raise InvalidInput(f"workers must be >= 0, got {cfg.workers}")
    if cfg.threads is not None and cfg.threads < 1:
        raise InvalidInput(f"threads must be >= 1, got {cfg.threads}")
    if not (cfg.save_every >= 0 and math.isfinite(cfg.save_every)):
        raise InvalidInput(f"save_every must be a number of minutes >= 0, got {cfg.save_every}")
    for field in dataclasses.fields(TrainConfig):
        valid = field.metadata["choices"]
        if valid and getattr(cfg, field.name) not in valid:
            raise InvalidInput(f"unknown {field.name} {getattr(cfg, field.name)!r}; expected one of "
                               f"{', '.join(valid)}")


def import_modules(names: tuple[str, ...] | list[str]) -> None:
    """Import the modules that register a run's own architectures (``--import``), from the Python
    path or the current folder; only these are ever imported by name, and only because the user
    named them."""
    if names and os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())  # as `python -m` would: a module of the folder the user runs in
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not name.startswith(exc.name):
                raise  # the module exists; something it imports does not: its own traceback
            raise InvalidInput(f"--import {name}: no module {exc.name!r} on the Python path (run from the "
                               "folder that holds it, or install its package)") from None


def starting_line(cfg: TrainConfig, model: torch.nn.Module, device: torch.device, steps: int) -> str:
    """What the run is about to do, said before its first (possibly long) epoch."""
    parameters = sum(p.numel() for p in model.parameters())
    line = (f"training {cfg.arch} ({parameters / 1e6:.2f} M parameters, T = {cfg.timesteps}) on {device}: "
            f"{cfg.epochs} epochs of {steps} steps")
    if cfg.compile:
        line += "; the first steps compile the model (a minute or more)"
    if device.type == "cpu" and parameters > 1_000_000:
        line += ("; a network this size takes seconds to minutes a step on a CPU: the paper's recipes "
                 "are meant for a GPU")
    return line


def writes_outputs() -> bool:
    """Whether this process writes the run's files: alone, or torchrun's rank 0. Read from the
    environment, so it holds before the process group starts."""
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def hold_output_dir(out: Path, create: bool) -> Iterator[None]:
    """This run's exclusive hold on its output folder, for as long as it trains.

    A second run, or a resume, into a folder that a run is still writing would interleave
    metrics.jsonl and overwrite its checkpoints: it fails here instead, naming the holder's pid.
    The hold is a file lock on ``out/.mpdagl-run.lock``, which the OS drops when the process ends
    however it ends (no stale lock after a crash). Taken by the process that writes (torchrun's
    rank 0); none for a folder that does not exist unless ``create``. Fails early, before any
    training, on a folder that is not writable. A start that fails before writing anything
    leaves no folder behind that it created.
    """
    if not writes_outputs() or not (create or out.is_dir()):
        yield
        return
    created = not out.exists()
    lock_path = out / LOCK_NAME
    lock = FileLock(lock_path, blocking=False)
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock.acquire()
        lock_path.write_text(str(os.getpid()))  # read by a run refused here
        for stale in out.glob(".*.tmp-*"):  # temporaries of a run killed mid-write
            stale.unlink()
    except Timeout:
        holder = lock_path.read_text().strip() or "unknown"
        raise InvalidInput(f"output folder {out} is in use by another training run (pid {holder}); "
                           "wait for it to end, or choose another --out") from None
    except OSError as exc:
        _tidy_after_failed_start(out, created)
        raise InvalidInput(f"output folder {out} is not writable: {exc}") from exc
    try:
        yield
    finally:
        lock.release()
        _tidy_after_failed_start(out, created)


def _tidy_after_failed_start(out: Path, created: bool) -> None:
    """A start that wrote no run file leaves no lock file, nor a folder it created."""
    if not out.is_dir() or any(f.exists() for f in _run_files(out)):
        return
    with contextlib.suppress(OSError):
        (out / LOCK_NAME).unlink(missing_ok=True)
        if created:
            out.rmdir()  # only when empty


def _run_files(out: Path) -> list[Path]:
    from mpdagl_triton.checkpoint import CONFIG_NAME, WEIGHTS_NAME

    return [out / name for name in (STATE_NAME, PREVIOUS_STATE_NAME, STATE_JSON, WEIGHTS_NAME, CONFIG_NAME,
                                    METRICS_NAME)]


def has_resume_point(out: Path) -> bool:
    """Whether ``out`` holds a resume point (``--resume auto`` continues it)."""
    return (out / STATE_NAME).is_file() or (out / PREVIOUS_STATE_NAME).is_file()


def elastic_restart(out: Path) -> bool:
    """Whether this process is torchrun's restart of a failed group (``--max-restarts``): it then
    continues from the resume point an earlier attempt left, if any. Known from the torchrun run
    id that the point records (the restart count differs between nodes: a node whose workers did
    not fail restarts them with the count unchanged), else from the restart count."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if run_id == "none":  # torchrun's default without --rdzv-id: the same for every launch
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return json.loads((out / STATE_JSON).read_text()).get("torchrun_run") == run_id
    return False


def restartable() -> bool:
    """Whether torchrun may restart this process: the folder it trains into is then never chosen
    afresh (a restart must find its own run again)."""
    return int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0


def held_run(out: Path) -> str | None:
    """What ``out`` holds that a fresh run would replace ("a run trained to epoch 3 of 12", "a
    model"), or None. Metrics without a checkpoint hold nothing: their epoch never landed."""
    if not any(f.name != METRICS_NAME and f.exists() for f in _run_files(out)):
        return None
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        state = json.loads((out / STATE_JSON).read_text())
        return f"a run trained to epoch {state['epoch']} of {state['config']['epochs']}"
    return "a model"


def free_output_dir(default: Path) -> Path:
    """``default``, or where it holds a run, the first of ``default-2``, ``default-3``, ... that
    holds none: a run with no ``--out`` never replaces an earlier one."""
    out, n = default, 1
    while held_run(out) is not None:
        n += 1
        out = default.with_name(f"{default.name}-{n}")
    return out


def claim_output_dir(out: Path, overwrite: bool) -> None:
    """Make ``out`` ready for a fresh run: a folder that holds another run's checkpoint is refused
    (hours of training are one forgotten ``--resume`` away), unless ``overwrite``, which removes
    what a run writes there (other files stay). Called under :func:`hold_output_dir`, by the
    process that writes."""
    if not writes_outputs():
        return
    held = held_run(out)
    if held is not None and not overwrite:
        raise InvalidInput(f"{out} already holds {held}: continue it with --resume, start over with "
                         "--overwrite (replaces it), or choose another --out")
    for f in _run_files(out):
        with contextlib.suppress(FileNotFoundError):
            f.unlink()


def check_free_space(out: Path, needed_bytes: int) -> None:
    """Fail before training when the folder cannot take a checkpoint."""
    free = shutil.disk_usage(out).free
    if free < needed_bytes:
        raise InvalidInput(f"output folder {out} has {free / 2**20:.1f} MiB free; a checkpoint needs about "
                         f"{needed_bytes / 2**20:.1f} MiB (model, optimizer state and a temporary copy)")


@dataclasses.dataclass
class Distributed:
    """This process's place among ``torchrun``'s processes (rank 0 of 1 when alone)."""

    rank: int = 0
    world: int = 1
    owns_group: bool = False  # init_distributed created torch.distributed's process group
    #: CPU collectives (gloo) beside NCCL's: the agreement on stopping and saving runs on the
    #: hosts, never queued behind the GPU's steps (None: the default group is gloo already)
    host_group: object = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def leave(self) -> None:
        """Destroy the process group this run created, once every process is done with it. Left
        to the interpreter's exit, gloo's threads were sometimes torn down in an order that
        aborted a process ("terminate called without an active exception")."""
        if self.owns_group and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's buffers (tdBN running statistics) to every process (a no-op alone). Each
        process updates its own in its last training step."""
        if self.world > 1:
            for buffer in module.buffers():
                torch.distributed.broadcast(buffer, 0)

    def sum(self, *values: torch.Tensor) -> list[torch.Tensor]:
        """Sums over every process (a no-op alone)."""
        if self.world == 1:
            return list(values)
        stacked = torch.stack([v.double() for v in values])
        torch.distributed.all_reduce(stacked)
        return list(stacked.unbind())

    def host_max(self, values: list[int]) -> list[int]:
        """Element-wise maxima over every process, on the hosts (a no-op alone)."""
        if self.world == 1:
            return values
        flags = torch.tensor(values, dtype=torch.int64)
        torch.distributed.all_reduce(flags, torch.distributed.ReduceOp.MAX, group=self.host_group)
        return flags.tolist()

    def host_gather(self, value: torch.Tensor) -> list[torch.Tensor]:
        """Every process's CPU tensor of one shape, in rank order (``[value]`` alone)."""
        if self.world == 1:
            return [value]
        gathered = [torch.empty_like(value) for _ in range(self.world)]
        torch.distributed.all_gather(gathered, value.contiguous(), group=self.host_group)
        return gathered


def init_distributed(device_name: str) -> tuple[Distributed, torch.device]:
    """Join torchrun's process group when WORLD_SIZE > 1 (NCCL on GPUs, gloo on CPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world <= 1:
        return Distributed(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns_group = not torch.distributed.is_initialized()
    if owns_group:
        backend = "nccl" if device.type == "cuda" else "gloo"
        store = _attempt_store(world)
        if store is None:
            torch.distributed.init_process_group(backend)
        else:
            torch.distributed.init_process_group(backend, store=store, rank=rank, world_size=world)
    host_group = None
    if torch.distributed.get_backend() != "gloo":
        host_group = torch.distributed.new_group(backend="gloo")
    return Distributed(rank, world, owns_group, host_group), device


def _attempt_store(world: int):
    """torchrun's store, its keys apart for each attempt of the group; None: torch's default.

    torchrun shares one store between its rendezvous and the workers' process groups, kept across
    restarts: a restarted group's processes would read the addresses its previous attempt
    published there and connect to dead processes (refused, or waiting). Prefixed by the restart
    count, the attempts keep apart; on one node only, where one agent counts the restarts of all
    processes (over several nodes set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 for torchrun: each
    attempt then gets a store of its own)."""
    if (os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
            or int(os.environ.get("LOCAL_WORLD_SIZE", "0")) != world):
        return None
    from torch.distributed.constants import default_pg_timeout

    store = torch.distributed.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                                       is_master=False, timeout=default_pg_timeout)
    return torch.distributed.PrefixStore(f"mpdagl/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def uses_channels_last(channels_last: bool | None, device: torch.device) -> bool:
    """Whether a run keeps its parameters channels-last: as asked, else on CUDA. The activations
    run channels-last there from the stem on anyway (``models.blocks.Stem``), and NCHW weights
    would be converted for every convolution, forward and backward (33 weight copies per compiled
    ResNet-19 step, ``python -m bench.launches --nchw``)."""
    return device.type == "cuda" if channels_last is None else channels_last


def build_model(cfg: TrainConfig, dataset: data.Dataset) -> models.SpikingNetwork:
    return models.create(
        cfg.arch, dataset.num_classes, cfg.timesteps, in_channels=dataset.in_channels,
        input_size=dataset.input_size, label_names=dataset.label_names,
        normalization=dataset.normalization, dataset=dataset.name,
        learn_tau=cfg.neuron == "plif", surrogate=cfg.surrogate, width_rule=cfg.width_rule,
    )


def optimizer_implementation(device: torch.device) -> dict:
    """How the optimizer steps on ``device``: fused on CUDA (one kernel for all parameters instead
    of a few foreach kernels, and GradScaler's inf check stays on the device: fp16 steps without
    a sync), torch's default elsewhere."""
    return {"fused": True} if device.type == "cuda" else {}


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module):
    params = list(model.parameters())  # weight decay on all parameters, as the authors' code does
    implementation = optimizer_implementation(params[0].device)
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, **implementation)
    else:
        optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **implementation)
    # cosine to 0 over the epochs, stepped per epoch; closed form, so a resume that extends
    # --epochs continues on the longer curve
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: 0.5 * (1 + math.cos(math.pi * min(epoch, cfg.epochs) / cfg.epochs)))
    return optimizer, scheduler


def loss_fn(cfg: TrainConfig, per_timestep: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE on the mean over T, or TET: the mean over T of CE at every timestep."""
    if cfg.loss == "tet":
        T = per_timestep.shape[0]
        return F.cross_entropy(per_timestep.flatten(0, 1).float(), labels.repeat(T))
    return F.cross_entropy(per_timestep.mean(0).float(), labels)


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------


def save_checkpoint(out: Path, model, optimizer, scheduler, scaler, state: dict,
                    extra: dict[str, torch.Tensor] | None = None) -> None:
    """Write a resume point; at an epoch's end (no ``state["partial"]``) the model files too.
    ``extra``: more tensors for the trainer state (a mid-epoch point's loader generators and sums)."""
    try:
        _write_checkpoint(out, model, optimizer, scheduler, scaler, state, extra or {})
    except OSError as exc:
        raise Unavailable(f"could not write the checkpoint of {point_name(state)} into {out} ({exc}); "
                      "the previous checkpoint is intact") from exc


def point_name(state: dict) -> str:
    """"epoch 3", or mid-epoch "step 50 (epoch 3, batch 6 of 22)"."""
    partial = state.get("partial")
    if not partial:
        return f"epoch {state['epoch']}"
    return f"step {state['step']} (epoch {state['epoch'] + 1}, batch {partial['batch']} of {partial['batches']})"


def _write_checkpoint(out: Path, model, optimizer, scheduler, scaler, state: dict,
                      extra: dict[str, torch.Tensor]) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update(extra)
    optim_state = optimizer.state_dict()
    for index, slots in optim_state["state"].items():
        for key, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{key}"] = value
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    state = {
        **state,
        "optimizer": {"param_groups": optim_state["param_groups"],
                      "scalars": {str(i): {k: v for k, v in slots.items() if not torch.is_tensor(v)}
                                  for i, slots in optim_state["state"].items()}},
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "python_rng": random.getstate(),
        "library_version": __version__,
        "torchrun_run": os.environ.get("TORCHELASTIC_RUN_ID"),  # its restarts resume (elastic_restart)
    }
    text = json.dumps(state, sort_keys=True)
    save_tensors(out / STATE_NAME, tensors, metadata={"state": text}, previous=out / PREVIOUS_STATE_NAME)
    atomic_write_text(out / STATE_JSON, json.dumps(state, indent=2, sort_keys=True) + "\n")
    if not state.get("partial"):  # the model files stay those of the last completed epoch
        model.save_pretrained(out)


def load_checkpoint(out: Path, log=None) -> tuple[dict, dict]:
    """(tensors, JSON state) of the resume point in ``out``: the latest, or where that one is
    missing or unreadable the previous one (``log`` says so). Neither readable: the latest's
    error, naming its file."""
    refused = []
    for path in (out / STATE_NAME, out / PREVIOUS_STATE_NAME):
        if not path.is_file():
            continue
        try:
            tensors, metadata = load_tensors(path)
            if "state" not in metadata:
                raise CheckpointError(f"{path} has no trainer state in its metadata")
            state = json.loads(metadata["state"])
        except (CheckpointError, json.JSONDecodeError) as exc:
            refused.append(exc if isinstance(exc, CheckpointError) else
                           CheckpointError(f"{path} holds an unreadable trainer state: {exc}"))
            continue
        if refused and log is not None:
            log(f"warning: {refused[0]}; resuming from the previous resume point, {path.name}")
        return tensors, state
    if refused:
        raise refused[0]
    raise CheckpointError(f"--resume: no checkpoint in {out} (expected {STATE_NAME})")


def restore(tensors: dict, state: dict, model, optimizer, scheduler, scaler) -> None:
    model_state = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    models.load_state_strict(model, model_state, source=STATE_NAME)
    slots: dict[int, dict] = {int(i): dict(s) for i, s in state["optimizer"]["scalars"].items()}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            slots.setdefault(int(index), {})[name] = value
    # how to step is this machine's choice (a CUDA run may resume on the CPU), not the checkpoint's;
    # set before loading, which places the state (Adam's step counts) by these flags
    groups = [{**saved, **{k: group[k] for k in IMPLEMENTATION_FLAGS if k in group}}
              for saved, group in zip(state["optimizer"]["param_groups"], optimizer.param_groups)]
    optimizer.load_state_dict({"state": slots, "param_groups": groups})
    scheduler.load_state_dict(state["scheduler"])
    for group, base, rule in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * rule(scheduler.last_epoch)  # the current curve, should --epochs change
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    version, internal, gauss = state["python_rng"]
    random.setstate((version, tuple(internal), gauss))


def merge_resumed_config(saved: dict, cfg: TrainConfig, explicit: set[str]) -> TrainConfig:
    """The checkpoint's config, with the explicitly given fields that a resume may change."""
    conflicts = [f"--{k.replace('_', '-')} {getattr(cfg, k)!r} (checkpoint: {saved[k]!r})"
                 for k in sorted(explicit) if k not in RESUMABLE_OVERRIDES and k in saved
                 and getattr(cfg, k) != saved[k]]
    if conflicts:
        raise InvalidInput("--resume: the checkpoint was trained with other settings: " + "; ".join(conflicts))
    merged = {**saved, **{k: getattr(cfg, k) for k in RESUMABLE_OVERRIDES if k in explicit}}
    return TrainConfig(**{f.name: merged.get(f.name, getattr(cfg, f.name))
                          for f in dataclasses.fields(TrainConfig)})


def read_metrics(out: Path, upto_epoch: int) -> list[dict]:
    """Complete lines of metrics.jsonl for epochs <= upto_epoch (a torn last line is dropped)."""
    return [row for row in read_jsonl(out / METRICS_NAME) if row.get("epoch", 0) <= upto_epoch]


def append_metrics(out: Path, row: dict) -> None:
    with open(out / METRICS_NAME, "a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ----------------------------------------------------------------------------------------------
# Stopping and mid-epoch resume points
# ----------------------------------------------------------------------------------------------

#: Under torchrun the processes agree on stopping and on writing a resume point every this many
#: steps, with one all-reduce of two integers over gloo on the hosts: never a read-back of the GPU
#: (no wait for the queued steps), but each agreement waits for the slowest process's host. Every
#: 10 steps it costs well under 1% of a step, and a stop waits at most 10 steps, seconds at worst,
#: far inside a scheduler's grace period (30 s on Kubernetes by default). Alone, the flag is a
#: Python bool read after every step.
AGREE_EVERY = 10


class StopWatch:
    """SIGTERM and SIGINT as a request to stop after the step in progress, and the clock of
    ``--save-every``; :meth:`poll` gives every process the same answer."""

    def __init__(self, minutes: float, dist: Distributed):
        self.minutes, self.dist = minutes, dist
        self.signum = 0  # the first stop signal received
        self.saved_at = time.monotonic()

    @contextlib.contextmanager
    def handling_signals(self) -> Iterator[None]:
        """The handlers, for as long as the run trains (only the main thread may set them)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _on_signal(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: now, without a resume point
        self.signum = self.signum or signum

    def poll(self, batch: int | None) -> tuple[bool, int]:
        """(write a resume point now, the signal to stop at or 0), the same in every process;
        checked after step ``batch`` of an epoch (None: at its end, always)."""
        if self.dist.world > 1 and batch is not None and batch % AGREE_EVERY:
            return False, 0
        due = self.minutes > 0 and time.monotonic() - self.saved_at >= self.minutes * 60
        signum, due = self.dist.host_max([self.signum, int(due)])  # SIGTERM (15) wins over SIGINT (2)
        return bool(due or signum), signum

    def saved(self) -> None:
        self.saved_at = time.monotonic()


@dataclasses.dataclass
class EpochSoFar:
    """An epoch in progress, as a mid-epoch resume point holds it for one process: where its
    loader stands and its running sums."""

    position: data.Position
    loss: float  # sum of loss x images (a float32 value: resumed sums continue bit-identically)
    correct: int
    seen: int
    seconds: float
    gradients: torch.Tensor | None = None  # GradientMagnitudes' sums (the same in every process)
    gradient_steps: int = 0


def write_mid_epoch_point(out: Path, model, optimizer, scheduler, scaler, dist: Distributed,
                          state: dict, so_far: EpochSoFar, batches: int, stopping: bool, log) -> None:
    """A resume point after step ``so_far.position.batch`` of epoch ``state["epoch"] + 1``: every
    process's loader generator and sums are gathered (the processes draw their own augmentation),
    rank 0 writes. A failed write leaves the previous point; the run goes on after one warning,
    or when ``stopping`` ends with the error."""
    position = so_far.position
    generators = dist.host_gather(position.generator)
    sums = dist.host_gather(torch.tensor([so_far.loss, so_far.correct], dtype=torch.float64))
    if not dist.is_main:
        return
    extra = {f"epoch.generator.{r}": t for r, t in enumerate(generators)}
    extra.update({f"epoch.sums.{r}": t for r, t in enumerate(sums)})
    if so_far.gradients is not None:
        extra["epoch.gradients"] = so_far.gradients
    state = {**state, "step": state["epoch"] * batches + position.batch,
             "partial": {"batch": position.batch, "batches": batches, "chunk_start": position.chunk_start,
                         "seen": so_far.seen, "seconds": so_far.seconds, "gradient_steps": so_far.gradient_steps}}
    try:
        save_checkpoint(out, model, optimizer, scheduler, scaler, state, extra)
    except Unavailable as exc:
        if stopping:
            raise
        log(f"warning: {exc}; training goes on")


def resumed_epoch(tensors: dict, state: dict, dist: Distributed) -> EpochSoFar:
    """This process's part of a mid-epoch resume point: its own loader generator and sums when the
    point was written by as many processes; otherwise the position alone (the rest of the epoch
    draws afresh) and rank 0 carrying the sums."""
    partial = state["partial"]
    saved_world = state.get("world_size", 1)
    try:
        sums = [tensors[f"epoch.sums.{r}"].tolist() for r in range(saved_world)]
        generator = tensors[f"epoch.generator.{dist.rank}"] if saved_world == dist.world else None
    except KeyError as exc:
        raise CheckpointError(f"{STATE_NAME}: a mid-epoch resume point without {exc.args[0]}") from None
    if generator is not None:
        position = data.Position(partial["batch"], partial["chunk_start"], generator.clone())
        (loss, correct), seen = sums[dist.rank], partial["seen"]
    else:
        position = data.Position(partial["batch"], partial["chunk_start"])
        loss, correct = (sum(column) for column in zip(*sums)) if dist.is_main else (0.0, 0.0)
        seen = partial["seen"] * saved_world if dist.is_main else 0
    return EpochSoFar(position, loss, int(correct), seen, partial["seconds"], tensors.get("epoch.gradients"),
                      partial.get("gradient_steps", 0))


# ----------------------------------------------------------------------------------------------
# Epochs
# ----------------------------------------------------------------------------------------------


class LaggedReadout:
    """Device scalars read on the host without waiting for the device.

    ``post(values, tag)`` starts a non-blocking copy into pinned memory; ``latest`` is the last
    ``(values, tag)`` whose copy has already landed (on the CPU, at once). The training loop thus
    shows progress and catches a NaN loss a few steps late, but never stalls the GPU queue.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.latest: tuple[list[float], object] | None = None
        self._buffer = self._event = self._tag = None

    def post(self, values: torch.Tensor, tag: object) -> None:
        if not self.cuda:
            self.latest = (values.tolist(), tag)
            return
        if self._event is not None:
            if not self._event.query():
                return  # the previous copy is still in flight; skip this one
            self.latest = (self._buffer.tolist(), self._tag)
        self._buffer = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
        self._buffer.copy_(values, non_blocking=True)
        self._event, self._tag = torch.cuda.Event(), tag
        self._event.record()


def begin_graph_step(cfg: TrainConfig) -> None:
    """Under CUDA graphs (reduce-overhead), a new step: the outputs of the last call, training step
    or eval batch, are consumed and may be overwritten. Without it, an output still referenced at
    the next call (an fp32 eval `logits` is the graph's own output) makes CUDA graph trees record
    a new graph for that call."""
    if cfg.compile and cfg.compile_mode == "reduce-overhead":
        torch.compiler.cudagraph_mark_step_begin()


def train_one_epoch(cfg, model, step_model, loader, optimizer, scaler, device, epoch,
                    dist: Distributed = Distributed(), log_every=20, resumed: EpochSoFar | None = None,
                    after_step: Callable[[int, Callable[[], EpochSoFar]], None] | None = None):
    """One epoch; host syncs only after the loop (progress and NaN checks read lagged copies).

    ``resumed``: continue the epoch from a mid-epoch resume point. ``after_step(step, so_far)``
    runs after every step but the last (the epoch's end writes a point anyway); ``so_far()``
    reads the epoch's state back (a sync), for a resume point."""
    model.train()
    resumed = resumed or EpochSoFar(data.Position(0, 0), 0.0, 0, 0, 0.0)
    total_loss = torch.full((), resumed.loss, device=device)
    correct = torch.full((), resumed.correct, device=device, dtype=torch.long)
    seen = resumed.seen
    start = time.perf_counter() - resumed.seconds
    first = resumed.position.batch
    bar = tqdm(total=len(loader), initial=first, desc=f"epoch {epoch}", leave=False, file=sys.stderr,
               disable=not sys.stderr.isatty(), dynamic_ncols=True)
    readout = LaggedReadout(device)
    gradients = GradientMagnitudes(model)
    if resumed.gradients is not None:
        gradients.total, gradients.steps = resumed.gradients.to(device), resumed.gradient_steps

    def so_far() -> EpochSoFar:
        return EpochSoFar(loader.position, total_loss.item(), int(correct.item()), seen, time.perf_counter() - start,
                          None if gradients.total is None else gradients.total.cpu(), gradients.steps)

    batches = loader.epoch(cfg.seed, epoch, start=resumed.position if first else None)
    for step, (images, labels) in enumerate(batches, first + 1):
        if cfg.check_finite and not bool(torch.isfinite(images).all()):
            raise InvalidInput(f"epoch {epoch}, step {step}: the input batch holds NaN or Inf")
        if cfg.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        begin_graph_step(cfg)
        with autocast(cfg, device):
            per_timestep = step_model(images, return_timesteps=True)
            loss = loss_fn(cfg, per_timestep, labels)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)  # the gradients' own magnitudes, for the record below
            gradients.add()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            gradients.add()
            optimizer.step()
        total_loss += loss.detach() * len(labels)
        correct += (per_timestep.detach().mean(0).argmax(1) == labels).sum()
        seen += len(labels)
        if step % log_every == 0:
            readout.post(torch.stack([total_loss, correct.to(total_loss.dtype)]), tag=seen)
            if readout.latest is not None:
                (loss_sum, right), counted = readout.latest
                # with several processes a NaN is caught after the loop, where all stop together
                if dist.world == 1 and not math.isfinite(loss_sum):
                    bar.close()
                    raise TrainingDiverged(f"loss became {loss_sum} at epoch {epoch}, by step {step}")
                bar.set_postfix(loss=f"{loss_sum / counted:.4f}", acc=f"{right / counted:.4f}",
                                img_s=f"{seen / (time.perf_counter() - start):.0f}")
        bar.update(1)
        if after_step is not None and step < len(loader):
            try:
                after_step(step, so_far)
            except BaseException:  # a stop: the bar ends cleanly before the message
                bar.close()
                raise
    bar.close()
    # the epoch's one read-back of its totals (after the loop, never inside a step); timed after
    # it, so that images/s counts the steps the GPU has finished, not those the host queued
    loss_sum, right, count = torch.stack(
        dist.sum(total_loss.double(), correct.double(), torch.tensor(float(seen), dtype=torch.float64, device=device))).tolist()
    seconds = time.perf_counter() - start
    count = max(count, 1)
    if not math.isfinite(loss_sum):
        raise TrainingDiverged(f"loss became {loss_sum} during epoch {epoch}")
    return {"train_loss": loss_sum / count, "train_acc": right / count,
            "seconds": seconds, "images_per_s": count / seconds, "gradients": gradients.means()}


class GradientMagnitudes:
    """The mean |gradient| of every conv and linear weight, averaged over an epoch's steps: what
    the paper's argument about vanishing gradients is about. One foreach kernel and one add per
    step on the device; read back once, at the epoch's end."""

    def __init__(self, model: torch.nn.Module):
        self.layers = [(name, module.weight) for name, module in model.named_modules()
                       if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear))]
        self.total: torch.Tensor | None = None
        self.steps = 0

    def add(self) -> None:
        grads = [w.grad if w.grad is not None else torch.zeros_like(w) for _, w in self.layers]
        if not grads:
            return
        l1 = torch.stack(torch._foreach_norm(grads, 1)).float()
        self.total = l1 if self.total is None else self.total.add_(l1)
        self.steps += 1

    def means(self) -> list[dict]:
        """``[{"layer": name, "mean_abs_grad": value}]`` in forward order."""
        if self.total is None:
            return []
        sums = self.total.tolist()
        return [{"layer": name, "mean_abs_grad": total / (weight.numel() * self.steps)}
                for (name, weight), total in zip(self.layers, sums)]


def autocast(cfg: TrainConfig, device: torch.device):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@torch.no_grad()
def evaluate(cfg: TrainConfig, eval_model, loader, device, dist: Distributed = Distributed()) -> dict:
    """Test loss and accuracy over the whole split (eval mode: running statistics, so each image's
    logits depend on it alone); with several processes each evaluates its share and the sums are
    combined."""
    eval_model.eval()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for images, labels in loader.epoch(cfg.seed, 0):
        if cfg.compile and len(images) < loader.batch_size:
            # the split's last batch, padded to the others' size: a compiled model would otherwise
            # compile a second, dynamic-shape graph for it (and record another CUDA graph)
            images = torch.cat([images, images.new_zeros((loader.batch_size - len(images), *images.shape[1:]))])
        if cfg.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        begin_graph_step(cfg)
        with autocast(cfg, device):
            logits = eval_model(images)[:len(labels)].float()
        total_loss += F.cross_entropy(logits, labels, reduction="sum")
        correct += (logits.argmax(1) == labels).sum()
        seen += len(labels)
    loss_sum, right, count = torch.stack(
        dist.sum(total_loss.double(), correct.double(), torch.tensor(float(seen), dtype=torch.float64, device=device))).tolist()
    return {"test_loss": loss_sum / count, "test_acc": right / count}


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


def train(cfg: TrainConfig, *, resume: bool | str | None = None, overwrite: bool = False,
          explicit: set[str] | None = None, stop_after_epoch: int | None = None, log=print) -> dict:
    """Train (or resume) and return the last epoch's metrics.

    ``resume``: True: continue the run in ``cfg.out`` from its resume point. The fields listed in
    :data:`RESUMABLE_OVERRIDES` (``epochs``, ``device``, ...) are taken from ``cfg``; every other
    field must match the checkpoint's or be left at None. ``"auto"``: continue when ``cfg.out``
    holds a resume point, start afresh otherwise. None (the default): ``"auto"`` in a process that
    torchrun restarted (``--max-restarts``), else False.
    SIGTERM or SIGINT stops the run after the step in progress, with a resume point there: it
    raises :class:`Stopped` (a KeyboardInterrupt); a second Ctrl-C stops at once.
    ``overwrite``: a fresh run may replace a run already in ``cfg.out`` (otherwise refused).
    ``explicit``: the fields the user set (the command line passes them); by default every field
    of ``cfg`` that is not None.
    ``stop_after_epoch``: end after that epoch as if interrupted (tests and staged runs).

    Example (the embedded digits, a few seconds on a CPU):
        >>> result = train(TrainConfig(epochs=1, out="runs/doctest"), overwrite=True)  # doctest: +SKIP
        >>> result = train(TrainConfig(epochs=2, out="runs/doctest"), resume=True)  # doctest: +SKIP
    """
    out = Path(cfg.out)
    if resume is None and elastic_restart(out):  # the first attempt did what --overwrite asked
        resume, overwrite = "auto", False
    if resume not in (None, False, True, "auto"):
        raise InvalidInput(f"resume must be True, False or 'auto', got {resume!r}")
    if resume and overwrite:
        raise InvalidInput("--resume continues the run in the output folder and --overwrite replaces it: pick one")
    if resume == "auto":
        resume = has_resume_point(out)
    if explicit is None:
        explicit = {f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) is not None}
    import_modules(cfg.imports)
    if not resume:
        validate(cfg)  # before the folder is made
    with hold_output_dir(out, create=not resume), _restored_threads():
        if not resume:
            claim_output_dir(out, overwrite)
        return _train(cfg, out, resume, explicit, stop_after_epoch, log)


@contextlib.contextmanager
def _restored_threads() -> Iterator[None]:
    """torch's intra-op thread count as it was before the run (the run sets its own)."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _train(cfg: TrainConfig, out: Path, resume: bool, explicit: set[str], stop_after_epoch: int | None,
           log) -> dict:
    saved = None
    if resume:
        tensors, saved = load_checkpoint(out, log if writes_outputs() else None)
        cfg = merge_resumed_config(saved["config"], cfg, explicit)
        validate(cfg)
    dist, device = init_distributed(cfg.device)
    cfg = dataclasses.replace(cfg, channels_last=uses_channels_last(cfg.channels_last, device))
    if cfg.amp == "fp16" and device.type != "cuda":
        raise InvalidInput("--amp fp16 needs a CUDA device; use bf16 or off on the CPU")
    if cfg.batch_size % dist.world:
        raise InvalidInput(f"batch_size {cfg.batch_size} (the global batch) does not split over {dist.world} processes")

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    dataset = data.load(cfg.dataset, path=cfg.data_path, timesteps=cfg.timesteps,
                        image_column=cfg.image_column, label_column=cfg.label_column,
                        dvs_split=cfg.dvs_split, dvs_frames=cfg.dvs_frames)
    model = build_model(cfg, dataset).to(device)
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads(model, cfg.threads))
    model.set_runtime_options(sync_stats=cfg.sync_bn, check_finite=cfg.check_finite)
    if dist.is_main:  # model + trainer state (weights, two optimizer slots) + a temporary copy
        check_free_space(out, needed_bytes=6 * sum(p.numel() * p.element_size() for p in model.parameters()))
    dist.barrier()
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer, scheduler = build_optimizer(cfg, model)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    start_epoch, best_acc, history, so_far = 0, 0.0, [], None
    if saved is not None:
        restore(tensors, saved, model, optimizer, scheduler, scaler)
        start_epoch, best_acc = saved["epoch"], saved["best_acc"]
        history = read_metrics(out, start_epoch)
        if saved.get("partial") and start_epoch < cfg.epochs:
            so_far = resumed_epoch(tensors, saved, dist)
        if dist.is_main:
            atomic_write_text(out / METRICS_NAME, "".join(json.dumps(r, sort_keys=True) + "\n" for r in history))
            log(f"{out} has trained {start_epoch} of {cfg.epochs} epochs: nothing to train (raise --epochs)"
                if start_epoch >= cfg.epochs else f"resuming {out} at {point_name(saved)}" if so_far else
                f"resuming {out} after epoch {start_epoch}")
            if saved.get("world_size", 1) != dist.world:  # each process's share of the data changes
                log(f"note: {out} was trained by {saved['world_size']} process(es), this run has "
                    f"{dist.world}: it continues, but not bit-identically to an uninterrupted run")

    wrapped = model
    if dist.world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    # evaluation bypasses DDP: its forward is a collective (buffer broadcast), and a process may
    # have one test batch fewer than another, or none
    step_model, eval_model = wrapped, model
    if cfg.compile:
        options = compile_options(cfg.compile_mode)
        step_model = torch.compile(wrapped, options=options)
        eval_model = step_model if wrapped is model else torch.compile(model, options=options)
    train_loader = data.Loader(dataset.train, dataset, cfg.batch_size, device, train=True,
                               workers=cfg.workers, rank=dist.rank, world=dist.world)
    test_loader = data.Loader(dataset.test, dataset, cfg.batch_size, device, train=False,
                              workers=cfg.workers, rank=dist.rank, world=dist.world)
    probe = next(data.Loader(dataset.test, dataset, cfg.probe_size, device, train=False).epoch(cfg.seed, 0))[0]
    if dist.is_main and start_epoch < cfg.epochs:
        log(starting_line(cfg, model, device, len(train_loader)))

    row, batches = history[-1] if history else {}, len(train_loader)
    watch, stopped = StopWatch(cfg.save_every, dist), None
    try:
        with watch.handling_signals():
            for epoch in range(start_epoch + 1, cfg.epochs + 1):
                begun = {"epoch": epoch - 1, "best_acc": best_acc, "config": dataclasses.asdict(cfg),
                         "world_size": dist.world}

                def after_step(step: int, current: Callable[[], EpochSoFar]) -> None:
                    save, signum = watch.poll(step)
                    if save:
                        write_mid_epoch_point(out, model, optimizer, scheduler, scaler, dist, begun, current(),
                                              batches, bool(signum), log)
                        watch.saved()
                    if signum:
                        dist.barrier()  # no process ends before rank 0 has written (torchrun would stop it)
                        raise Stopped(signum, out, point_name({**begun, "step": (epoch - 1) * batches + step,
                                                               "partial": {"batch": step, "batches": batches}}))

                lr = optimizer.param_groups[0]["lr"]
                row = {"epoch": epoch, "lr": lr, "test_split": dataset.test_split}
                row.update(train_one_epoch(cfg, model, step_model, train_loader, optimizer, scaler, device,
                                           epoch, dist, resumed=so_far, after_step=after_step))
                so_far = None
                scheduler.step()
                dist.broadcast_buffers(model)  # every process evaluates the running statistics rank 0 saves
                row.update(evaluate(cfg, eval_model, test_loader, device, dist))
                best_acc = max(best_acc, row["test_acc"])
                if dist.is_main:  # metrics and checkpoints come from one process
                    row.update(analysis.probe(model, probe))  # per-layer "layers" and "synapses"
                    log(f"epoch {epoch}/{cfg.epochs}  loss {row['train_loss']:.4f}  "
                        f"train acc {row['train_acc']:.4f}  test acc {row['test_acc']:.4f}  "
                        f"{row['images_per_s']:.{0 if row['images_per_s'] >= 10 else 2}f} img/s  {row['seconds']:.1f} s")
                    append_metrics(out, row)
                    state = {"epoch": epoch, "step": epoch * batches, "best_acc": best_acc,
                             "config": dataclasses.asdict(cfg), "world_size": dist.world}
                    save_checkpoint(out, model, optimizer, scheduler, scaler, state)
                watch.saved()
                dist.barrier()
                _, signum = watch.poll(None)  # a signal in the epoch's last step, evaluation or write
                if signum:
                    raise Stopped(signum, out, f"step {epoch * batches} (the end of epoch {epoch})")
                if stop_after_epoch is not None and epoch >= stop_after_epoch:
                    break
    except Stopped as stop:  # every process stops here, at the same step: the group ends cleanly
        stopped = stop
    del wrapped, step_model  # DDP's reducer holds the process group: gone before the group is
    dist.leave()
    if stopped is not None:
        raise stopped
    return {**row, "best_acc": best_acc, "out": str(out)}
