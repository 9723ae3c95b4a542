"""Trained models from a training folder or the Hugging Face Hub: ``load``.

``load`` reads ``config.json`` + ``model.safetensors`` (never pickle, never remote code). Model
cards and uploads live in :mod:`mpdagl_triton.publish`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mpdagl_triton.checkpoint import CONFIG_NAME, LIBRARY, WEIGHTS_NAME, CheckpointError, read_json
from mpdagl_triton.errors import InvalidInput
from mpdagl_triton.models import SpikingNetwork
from mpdagl_triton.publish import REPO_ID, HubError, check_config, model_card, push  # noqa: F401 (re-exported)
from mpdagl_triton.runtime import resolve_device


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def load(source: str | Path, *, revision: str | None = None,
         device: str | torch.device = "cpu") -> SpikingNetwork:
    """A ready-to-evaluate model from a training folder (or its config.json / model.safetensors)
    or a Hub repo id.

    Reads ``config.json`` (architecture, classes, T, neuron options, ...) and ``model.safetensors``
    only: never pickle, never remote code. Hub downloads honour ``HF_HUB_OFFLINE`` and the local
    cache. Raises CheckpointError for missing or foreign files and weights that do not match the
    config, HubError for a repo or revision the Hub does not have, ValueError for a ``revision``
    of a local folder or a ``device`` this machine lacks (``"auto"``: CUDA when available).

    The model is in eval mode: under ``torch.no_grad()`` (as ``mpdagl eval`` runs it) it takes the
    inference path, tdBN folded into the convolutions (docs/deploy.md); with gradients on, the
    fused op with its surrogate gradients.

    Example (after ``mpdagl train``; tested in tests/test_train.py and tests/test_hub.py):
        >>> model = load("runs/digits")            # doctest: +SKIP
        >>> model = load("user/mpdagl-resnet19-cifar10")   # doctest: +SKIP
        >>> with torch.no_grad():                  # doctest: +SKIP
        ...     logits = model(images)             # [B, classes]
    """
    device = resolve_device(device)
    folder = local_folder(source)
    if folder is not None:
        if revision is not None:
            raise InvalidInput(f"revision={revision!r} applies to Hub repos; {folder} is a local folder")
        check_config(read_json(folder / CONFIG_NAME), folder / CONFIG_NAME)
        if not (folder / WEIGHTS_NAME).is_file():
            raise CheckpointError(f"{folder} has no {WEIGHTS_NAME}")
        return _build(str(folder), revision=None, device=device)
    repo_id = str(source)
    if not REPO_ID.match(repo_id):
        raise CheckpointError(f"{repo_id} is neither a folder nor a Hub repo id (user/name)")
    parent = repo_id.split("/")[0]
    if Path(parent).is_dir():  # runs/nothing: a missing training folder, not a repo to ask the Hub for
        raise CheckpointError(f"no folder {repo_id} (in {parent}/: {_children(Path(parent))})")
    config_path = _download(repo_id, CONFIG_NAME, revision)
    check_config(read_json(config_path), f"{repo_id}/{CONFIG_NAME}")
    _download(repo_id, WEIGHTS_NAME, revision)
    return _build(repo_id, revision=revision, device=device)


def _children(folder: Path, most: int = 5) -> str:
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return ", ".join(names[:most]) + (" ..." if len(names) > most else "") if names else "no folders"


def local_folder(source: str | Path) -> Path | None:
    """The training folder that ``source`` names on this machine (the folder, or its config.json
    or model.safetensors), or None for anything else (a Hub repo id). Another existing file is
    refused: it is never a repo id."""
    path = Path(source)
    if path.is_file():
        if path.name not in (CONFIG_NAME, WEIGHTS_NAME):
            raise CheckpointError(f"{path} is a file; pass the folder that holds {CONFIG_NAME} and {WEIGHTS_NAME}")
        return path.parent
    return path if path.is_dir() else None


def _build(model_id: str, revision: str | None, device) -> SpikingNetwork:
    try:
        model = SpikingNetwork.from_pretrained(model_id, revision=revision, map_location=str(device))
    except TypeError as exc:  # config keys that SpikingNetwork does not take
        raise CheckpointError(f"{model_id}/{CONFIG_NAME} does not describe a model: {exc}") from exc
    if Path(model_id).is_dir():  # its results go along with push_to_hub
        model.trained_in = Path(model_id)
    return model.eval()


def _download(repo_id: str, filename: str, revision: str | None) -> str:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    where = f"{repo_id}" + (f" at revision {revision!r}" if revision else "")
    try:
        return hf_hub_download(repo_id, filename, revision=revision)
    except RevisionNotFoundError as exc:
        raise HubError(f"the Hub repo {repo_id} has no revision {revision!r}") from exc
    except RepositoryNotFoundError as exc:
        raise HubError(f"no Hub repo {repo_id} (or it is private and no valid token was given)") from exc
    except LocalEntryNotFoundError as exc:  # (a subclass of EntryNotFoundError: first)
        raise HubError(f"{filename} of {where} is not in the local cache and the Hub cannot be reached "
                       f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}): {exc}") from exc
    except EntryNotFoundError as exc:
        raise CheckpointError(f"{where} has no {filename}: not an {LIBRARY} model") from exc


