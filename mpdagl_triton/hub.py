"""Loading trained models from a local folder (and, later, the Hugging Face Hub)."""

from __future__ import annotations

from pathlib import Path

import torch

from mpdagl_triton.checkpoint import CheckpointError, read_json
from mpdagl_triton.models import SpikingNetwork
from mpdagl_triton.models.network import CONFIG_NAME, LIBRARY, WEIGHTS_NAME


def load(source: str | Path, *, device: str | torch.device = "cpu") -> SpikingNetwork:
    """A ready-to-evaluate model from a training output folder.

    Reads ``config.json`` (architecture, classes, T, neuron options, ...) and ``model.safetensors``;
    never pickle. Raises CheckpointError for a folder that is missing files, holds another
    library's files, or weights that do not match the config.

    Example:
        >>> model = load("runs/digits")
        >>> logits = model(images)   # [B, classes]
    """
    folder = Path(source)
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a folder with a trained model")
    config = read_json(folder / CONFIG_NAME)
    if config.get("library") != LIBRARY:
        raise CheckpointError(f"{folder / CONFIG_NAME} was not written by {LIBRARY} "
                              f"(library: {config.get('library')!r})")
    if not (folder / WEIGHTS_NAME).is_file():
        raise CheckpointError(f"{folder} has no {WEIGHTS_NAME}")
    try:
        model = SpikingNetwork.from_pretrained(str(folder), map_location=str(device))
    except TypeError as exc:  # config keys that SpikingNetwork does not take
        raise CheckpointError(f"{folder / CONFIG_NAME} does not describe a model: {exc}") from exc
    return model.eval()
