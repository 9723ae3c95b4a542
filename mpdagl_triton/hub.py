"""Trained models on disk and on the Hugging Face Hub: load, model card, push.

``load`` reads ``config.json`` + ``model.safetensors`` from a training folder or a Hub repo (never
pickle, never remote code); ``push`` uploads a training folder with a generated model card.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from mpdagl_triton.checkpoint import CheckpointError, read_json, read_jsonl
from mpdagl_triton.errors import InvalidInput, Unavailable
from mpdagl_triton.models import SpikingNetwork
from mpdagl_triton.models.network import CONFIG_NAME, LIBRARY, WEIGHTS_NAME

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

#: (dataset, architecture, T) -> the paper's test accuracy in % (docs/method.md#paper-results).
PAPER_RESULTS = {
    ("cifar10", "resnet19", 6): "96.54", ("cifar10", "resnet19", 4): "96.35",
    ("cifar10", "resnet19", 2): "96.18", ("cifar100", "resnet19", 6): "80.49",
    ("cifar100", "resnet19", 4): "79.72", ("cifar100", "resnet19", 2): "78.84",
    ("cifar10-dvs", "vggsnn", 10): "82.50 (84.10 with TET + Adam)",
    ("tiny-imagenet", "vgg13", 4): "58.14",
}
HUB_DATASET_IDS = {"cifar10": "uoft-cs/cifar10", "cifar100": "uoft-cs/cifar100",
                   "tiny-imagenet": "zh-plus/tiny-imagenet"}
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "tiny-imagenet": "Tiny-ImageNet",
                 "cifar10-dvs": "CIFAR10-DVS", "digits": "digits (scikit-learn)"}
#: what `push` uploads from a training folder (the optimizer state stays home)
UPLOADED = ("model.safetensors", "config.json", "metrics.jsonl", "README.md")
CITATION = """@inproceedings{jiang2025mpdagl,
  title     = {Adaptive Gradient Learning for Spiking Neural Networks by Exploiting Membrane Potential Dynamics},
  author    = {Jiang, Jiaqiang and others},
  booktitle = {Proceedings of the International Joint Conference on Artificial Intelligence (IJCAI)},
  year      = {2025},
  note      = {arXiv:2505.11863}
}"""


class HubError(Unavailable):
    """The Hub refused or could not serve a request."""


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

    Example (after ``mpdagl train``; tested in tests/test_train.py and tests/test_hub.py):
        >>> model = load("runs/digits")            # doctest: +SKIP
        >>> model = load("user/mpdagl-resnet19-cifar10")   # doctest: +SKIP
        >>> logits = model(images)                 # [B, classes]  # doctest: +SKIP
    """
    from mpdagl_triton.train import resolve_device

    device = resolve_device(str(device))
    folder = local_folder(source)
    if folder is not None:
        if revision is not None:
            raise InvalidInput(f"revision={revision!r} applies to Hub repos; {folder} is a local folder")
        _check_config(read_json(folder / CONFIG_NAME), folder / CONFIG_NAME)
        if not (folder / WEIGHTS_NAME).is_file():
            raise CheckpointError(f"{folder} has no {WEIGHTS_NAME}")
        return _build(str(folder), revision=None, device=device)
    repo_id = str(source)
    if not REPO_ID.match(repo_id):
        raise CheckpointError(f"{repo_id} is neither a folder nor a Hub repo id (user/name)")
    config_path = _download(repo_id, CONFIG_NAME, revision)
    _check_config(read_json(config_path), f"{repo_id}/{CONFIG_NAME}")
    _download(repo_id, WEIGHTS_NAME, revision)
    return _build(repo_id, revision=revision, device=device)


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


def _check_config(config: dict, where) -> None:
    if config.get("library") != LIBRARY:
        raise CheckpointError(f"{where} was not written by {LIBRARY} (library: {config.get('library')!r}); "
                              "only mpdagl-triton models load here")


def _build(model_id: str, revision: str | None, device) -> SpikingNetwork:
    try:
        model = SpikingNetwork.from_pretrained(model_id, revision=revision, map_location=str(device))
    except TypeError as exc:  # config keys that SpikingNetwork does not take
        raise CheckpointError(f"{model_id}/{CONFIG_NAME} does not describe a model: {exc}") from exc
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


# ----------------------------------------------------------------------------------------------
# Model card
# ----------------------------------------------------------------------------------------------


def _normalization(norm: dict | None) -> str:
    if not norm:
        return "none"
    return f"mean {', '.join(map(str, norm['mean']))}; std {', '.join(map(str, norm['std']))} (of pixels in [0, 1])"


def _parameter_count(folder: Path) -> int:
    """Learnable parameters in model.safetensors (running statistics excluded), from its header."""
    from safetensors import safe_open

    with safe_open(str(folder / WEIGHTS_NAME), framework="pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape())
                   for k in f.keys() if not k.endswith(("running_mean", "running_var")))


def _dataset_identity(dataset: str) -> tuple[str | None, str]:
    """(Hub dataset id or None, name for people) of the ``dataset`` a model was trained on: a
    named dataset, a Hub id, or a local folder (as given to ``mpdagl train``), whose path means
    nothing on the Hub and is shown by its last component."""
    if dataset in DATASET_NAMES:
        return HUB_DATASET_IDS.get(dataset), DATASET_NAMES[dataset]
    if REPO_ID.match(dataset) and not Path(dataset).is_dir():
        return dataset, dataset
    return None, f"a local dataset ({Path(dataset).name})"


def model_card(folder: str | Path, repo_id: str, license: str = "mit") -> str:
    """The README.md of a training folder: YAML front matter (library, tags, datasets,
    model-index with the measured test accuracy) and a body with the settings, recipe, final
    metrics, per-layer table, the paper's number for the same setting, usage and citation."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    folder = Path(folder)
    config = read_json(folder / CONFIG_NAME)
    state = json.loads((folder / "trainer_state.json").read_text()) if (folder / "trainer_state.json").is_file() else {}
    train_cfg = state.get("config", {})
    rows = read_jsonl(folder / "metrics.jsonl")
    last = rows[-1] if rows else {}
    dataset = config.get("dataset") or "unknown"
    dataset_id, dataset_name = _dataset_identity(dataset)
    arch, T = config["arch"], config["timesteps"]
    neuron = {"vth": 0.5, "tau": 0.2, "learn_tau": True, "surrogate": "rect", "width_rule": "mpdagl",
              **config.get("neuron", {})}
    eval_results = None
    if "test_acc" in last:
        eval_results = [EvalResult(task_type="image-classification", task_name="Image Classification",
                                   dataset_type=dataset_id or Path(dataset).name, dataset_name=dataset_name,
                                   dataset_split="test", metric_type="accuracy", metric_name="Top-1 accuracy",
                                   metric_value=round(100 * last["test_acc"], 2))]
    data = ModelCardData(
        library_name=LIBRARY, license=license, model_name=repo_id.split("/")[-1],
        tags=sorted({"spiking-neural-network", "snn", "mpd-agl", "image-classification"}
                    | ({dataset} if dataset in DATASET_NAMES else set())),
        datasets=[dataset_id] if dataset_id else None, eval_results=eval_results,
        pipeline_tag="image-classification",
    )
    paper = PAPER_RESULTS.get((dataset, arch, T))
    lines = [
        f"# {repo_id.split('/')[-1]}",
        "",
        f"A spiking `{arch}` (T = {T}) trained on {dataset_name} with MPD-AGL, the adaptive surrogate "
        "gradient of *Adaptive Gradient Learning for Spiking Neural Networks by Exploiting Membrane "
        "Potential Dynamics* (IJCAI 2025), using the `mpdagl-triton` library.",
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | `{arch}`, {_parameter_count(folder) / 1e6:.2f} M parameters, "
        f"{config['num_classes']} classes, input {config['in_channels']}x{config['input_size']}x{config['input_size']} |",
        f"| timesteps T | {T} |",
        f"| neuron | {'PLIF (learnable decay)' if neuron['learn_tau'] else 'LIF (fixed decay)'}, "
        f"tau {'init ' if neuron['learn_tau'] else ''}{neuron['tau']}, threshold {neuron['vth']}, hard reset |",
        f"| surrogate | `{neuron['surrogate']}`, width rule `{neuron['width_rule']}` |",
        f"| input normalization | {_normalization(config.get('normalization'))} |",
        "",
    ]
    if train_cfg:
        lines += ["## Training recipe", "", "| | |", "|---|---|"]
        for key in ("dataset", "epochs", "batch_size", "optimizer", "lr", "weight_decay", "loss",
                    "amp", "seed"):
            if key in train_cfg:
                value = dataset_name if key == "dataset" else train_cfg[key]  # not a local path
                lines.append(f"| {key.replace('_', ' ')} | {value} |")
        lines += ["| schedule | cosine to 0, per epoch |", ""]
    if last:
        lines += ["## Results", "", "| metric | value |", "|---|---|",
                  f"| test accuracy (epoch {last['epoch']}) | {100 * last['test_acc']:.2f} % |",
                  f"| best test accuracy | {100 * max(r['test_acc'] for r in rows):.2f} % |",
                  f"| train accuracy | {100 * last['train_acc']:.2f} % |",
                  f"| test loss | {last['test_loss']:.4f} |",
                  f"| paper, same setting | {paper + ' %' if paper else 'not reported'} |", ""]
        if last.get("layers"):
            lines += ["Per spiking layer at the last epoch (firing rate on a probe batch of test images):", "",
                      "| layer | tau | kappa t=1 | kappa t>1 | firing rate |", "|---|---|---|---|---|"]
            for layer in last["layers"]:
                lines.append(f"| `{layer['layer']}` | {layer['tau']:.4f} | {layer['kappa_first']:.4f} | "
                             f"{layer['kappa_rest']:.4f} | {layer['firing_rate']:.4f} |")
            lines.append("")
    lines += [
        "## Use", "", "```python", "import mpdagl_triton", "",
        f'model = mpdagl_triton.load("{repo_id}")   # safetensors only, no remote code',
        (f"logits = model(frames)   # event frames [B, {T}, 2, H, W] (see the library's README) -> [B, classes]"
         if dataset == "cifar10-dvs" else
         "logits = model(images)   # images [B, C, H, W] normalized as above -> [B, classes]"),
        "```", "", "## Citation", "", "```bibtex", CITATION, "```", "",
    ]
    return ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n" + "\n".join(lines)).content


# ----------------------------------------------------------------------------------------------
# Pushing
# ----------------------------------------------------------------------------------------------


def push(folder: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
         commit_message: str | None = None, token: str | None = None, create_pr: bool = False) -> str:
    """Upload a training folder (model, config, metrics, plots, a generated model card).

    Returns the URL of the commit, or with ``create_pr`` of the pull request that holds it (opened
    against ``revision``, else main). Authentication: ``token``, else ``HF_TOKEN``, else the
    stored login (``hf auth login``).
    """
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    folder = Path(folder)
    if not REPO_ID.match(repo_id):
        raise InvalidInput(f"--repo-id must look like user/name, got {repo_id!r}")
    _check_config(read_json(folder / CONFIG_NAME), folder / CONFIG_NAME)
    if not (folder / WEIGHTS_NAME).is_file():
        raise CheckpointError(f"{folder} has no {WEIGHTS_NAME}; nothing to push")
    token = token or get_token()
    if not token:
        raise HubError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="mpdagl-push-") as staging:
        staged = Path(staging)
        for name in UPLOADED[:-1]:
            if (folder / name).is_file():
                shutil.copy2(folder / name, staged / name)
        for png in sorted(folder.glob("*.png")) + sorted(folder.glob("analysis/*")):
            target = staged / png.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(png, target)
        (staged / "README.md").write_text(model_card(folder, repo_id))
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            if revision:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            info = api.upload_folder(folder_path=staging, repo_id=repo_id, revision=revision,
                                     commit_message=commit_message or f"Upload {folder.name} with mpdagl push",
                                     create_pr=create_pr)
        except HfHubHTTPError as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status in (401, 403):
                raise HubError(f"the Hub rejected the token ({status}) for {repo_id}: check HF_TOKEN "
                               "or `hf auth login`, and write access to the repo") from exc
            raise HubError(f"pushing {folder} to {repo_id} failed: {exc}") from exc
    return str(getattr(info, "pr_url" if create_pr else "commit_url", info))
