"""Model cards and uploads of a trained model's folder to the Hugging Face Hub.

Below the models in the import order: a model's own ``push_to_hub`` uploads through here, and
the card is built from the folder's files (config.json, metrics.jsonl, trainer_state.json), not
from a live model.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import shutil
import tempfile
from pathlib import Path

from mpdagl_triton.checkpoint import (CONFIG_NAME, LIBRARY, WEIGHTS_NAME, CheckpointError, read_json,
                                      read_jsonl)
from mpdagl_triton.errors import InvalidInput, Unavailable

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


def network_errors() -> tuple[type[BaseException], ...]:
    """What huggingface_hub raises when the network fails: OS-level errors, its offline mode, and
    the transport errors of whichever HTTP client this version of it uses."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    errors: list[type[BaseException]] = [OSError, OfflineModeIsEnabled]
    for client, name in (("httpx2", "TransportError"), ("httpx", "TransportError"),
                         ("requests", "ConnectionError")):
        try:
            errors.append(getattr(importlib.import_module(client), name))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def check_config(config: dict, where) -> None:
    """Refuse a config.json that another library wrote."""
    if config.get("library") != LIBRARY:
        raise CheckpointError(f"{where} was not written by {LIBRARY} (library: {config.get('library')!r}); "
                              "only mpdagl-triton models load here")


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
    split = last.get("test_split", "test")  # the held-out split evaluated, as the dataset names it
    eval_results = None
    if "test_acc" in last:
        eval_results = [EvalResult(task_type="image-classification", task_name="Image Classification",
                                   dataset_type=dataset_id or Path(dataset).name, dataset_name=dataset_name,
                                   dataset_split=split, metric_type="accuracy", metric_name="Top-1 accuracy",
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
                  f"| {split} accuracy (epoch {last['epoch']}) | {100 * last['test_acc']:.2f} % |",
                  f"| best {split} accuracy | {100 * max(r['test_acc'] for r in rows):.2f} % |",
                  f"| train accuracy | {100 * last['train_acc']:.2f} % |",
                  f"| {split} loss | {last['test_loss']:.4f} |",
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
        "```", "",
        "## Export", "",
        "To run the model outside PyTorch training code: `mpdagl export DIR --format nir --out model.nir` "
        "writes a NIR graph (tdBN folded into the convolutions, each neuron an `nir.LIF`; "
        "pip install 'mpdagl-triton[nir]') that SpikingJelly, snnTorch, Norse, Sinabs, Rockpool or Lava "
        "import; `--format pt2` writes an AOTInductor package for `torch._inductor.aoti_load_package`. "
        "`DIR` is a training folder or this repo's id; see the library's docs/deploy.md.", "",
        "## Citation", "", "```bibtex", CITATION, "```", "",
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
    check_config(read_json(folder / CONFIG_NAME), folder / CONFIG_NAME)
    if not (folder / WEIGHTS_NAME).is_file():
        raise CheckpointError(f"{folder} has no {WEIGHTS_NAME}; nothing to push")
    token = token or get_token()
    if not token:
        raise InvalidInput("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
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
        except network_errors() as exc:
            raise HubError(f"pushing {folder} to {repo_id}: the Hub cannot be reached "
                           f"({type(exc).__name__}: {exc}); check the network, then push again") from exc
    return str(getattr(info, "pr_url" if create_pr else "commit_url", info))
