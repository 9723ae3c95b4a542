"""Where and how work runs on this machine: the device by name, and CPU threads for a model.

Below the models and the training loop, so that loading a model never imports the trainer.
"""

from __future__ import annotations

import os

import torch

from mpdagl_triton.errors import InvalidInput

#: below this many parameters a model's CPU ops are too small to split over threads: OpenMP's
#: threads then spin more than they work, and on a machine whose cores are busy a tiny model
#: trains many times slower with every core than with one
SMALL_MODEL_PARAMETERS = 1_000_000


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``...; refuses CUDA where there is none.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InvalidInput(f"device {name!r}: not a device name; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInput(f"device {name!r}: CUDA is not available on this machine; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InvalidInput(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                           f"cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    return device


def cpu_threads(model: torch.nn.Module, requested: int | None = None) -> int:
    """Intra-op threads for running ``model`` on the CPU: ``requested`` when given, else what
    ``OMP_NUM_THREADS`` says when set, else one thread for a small model and torch's default
    (one per core) for a larger one.

    Example:
        >>> cpu_threads(torch.nn.Linear(8, 2))
        1
        >>> cpu_threads(torch.nn.Linear(8, 2), requested=3)
        3
    """
    if requested is not None:
        if requested < 1:
            raise InvalidInput(f"threads must be >= 1, got {requested}")
        return requested
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    if sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMETERS:
        return 1
    return torch.get_num_threads()
