"""``SpikingNetwork``: an architecture plus its encoding, readout and Hub-style save/load."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Callable, Iterator

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn

from mpdagl_triton._version import __version__
from mpdagl_triton.errors import InvalidInput
from mpdagl_triton.checkpoint import (CONFIG_NAME, LIBRARY, WEIGHTS_NAME, CheckpointError, atomic_write_json,
                                      load_tensors, save_tensors)
from mpdagl_triton.layers import TdBNPLIF

from .blocks import init_weights
from .resnet import resnet18, resnet19
from .tiny import tiny
from .vgg import vgg13, vggsnn

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "resnet19": resnet19,
    "resnet18": resnet18,
    "vggsnn": vggsnn,
    "vgg13": vgg13,
    "tiny": tiny,
}
#: a training folder's record of how the model was trained, which its model card reports
RESULTS_FILES = ("metrics.jsonl", "trainer_state.json")
ZOO = frozenset(ARCHITECTURES)


def register(name: str, builder: Callable[..., nn.Module], *, replace: bool = False) -> Callable[..., nn.Module]:
    """Make ``name`` an architecture like the zoo's: ``TrainConfig(arch=name)``, ``mpdagl train
    --arch name --import your.module``, checkpoints, resume, the probe, ``analyze``, ``push`` and
    ``load`` then take it (``load`` once the module that registers it has been imported: loading
    never imports code by itself).

    ``builder(num_classes, timesteps, in_channels=..., input_size=..., **neuron_options)`` returns
    a body mapping images ``[B, C, H, W]`` (or event frames ``[B, T, C, H, W]``) to the readout at
    every timestep ``[T, B, classes]``; :class:`SpikingNetwork` wraps it (input checks, the mean
    over T, config.json, the authors' initialisation of its convolutions). A body whose classifier
    needs one input size says so with a class attribute ``fixed_input_size = True``. Returns
    ``builder``; registering the same builder again is a no-op, another one under a taken name
    needs ``replace=True``; the zoo's names cannot be replaced.

    Example:
        >>> from torch import nn
        >>> from mpdagl_triton.models import ConvSpike, Stem, fold, register, create
        >>> class Two(nn.Module):
        ...     def __init__(self, num_classes, timesteps, in_channels=1, input_size=8, **neuron):
        ...         super().__init__()
        ...         self.stem = Stem(in_channels, 8, timesteps, **neuron)
        ...         self.conv = ConvSpike(8, 8, **neuron)
        ...         self.head = nn.Linear(8, num_classes)
        ...     def forward(self, x):                                   # [B, C, H, W]
        ...         h = self.conv(self.stem(x))                         # [T, B, 8, H, W]
        ...         return self.head(h.mean((-2, -1)))                  # [T, B, classes]
        >>> _ = register("two-layers", Two)
        >>> create("two-layers", 10, T=2, in_channels=1, input_size=8)(torch.rand(3, 1, 8, 8)).shape
        torch.Size([3, 10])
    """
    if not isinstance(name, str) or not name or name != name.strip() or "/" in name:
        raise InvalidInput(f"an architecture name is a non-empty word without '/', got {name!r}")
    if not callable(builder):
        raise InvalidInput(f"the builder of {name!r} must be callable, got {type(builder).__name__}")
    if name in ZOO:
        raise InvalidInput(f"{name!r} is an architecture of the zoo; register yours under another name")
    if ARCHITECTURES.get(name, builder) is not builder and not replace:
        raise InvalidInput(f"{name!r} is already registered (by {ARCHITECTURES[name].__module__}); pass "
                           "replace=True to replace it")
    ARCHITECTURES[name] = builder
    return builder


def unknown_architecture(arch: str) -> str:
    """The message for an architecture nobody registered."""
    registered = sorted(set(ARCHITECTURES) - ZOO)
    close = difflib.get_close_matches(arch, ARCHITECTURES, n=2)
    return (f"unknown architecture {arch!r}" + (f" (did you mean {' or '.join(close)}?)" if close else "")
            + f"; available: {', '.join(sorted(ZOO))}"
            + (f"; registered here: {', '.join(registered)}" if registered else "")
            + ". An architecture of your own must be registered before use (mpdagl_triton.models."
              "register): import the module that registers it (--import MODULE)")


NEURON_OPTIONS = ("vth", "tau", "learn_tau", "surrogate", "width_rule", "alpha", "kappa0", "backend")


class SpikingNetwork(
    nn.Module,
    PyTorchModelHubMixin,
    library_name=LIBRARY,
    tags=["spiking-neural-network", "snn", "mpd-agl"],
    paper_url="https://arxiv.org/abs/2505.11863",
    license="mit",
):
    """A spiking classifier: ``forward(x) -> logits [B, classes]`` (mean over T of the readout).

    Args:
        arch: one of :data:`ARCHITECTURES`.
        num_classes: number of classes.
        timesteps: T.
        in_channels, input_size: the input image (``[B, C, H, W]``, direct encoding) or event
            frames (``[B, T, C, H, W]``).
        neuron: options passed to every TdBNPLIF (vth, tau, learn_tau, surrogate, width_rule, ...).
        label_names, normalization, dataset: recorded in config.json for users of the checkpoint.

    Example:
        >>> net = SpikingNetwork("tiny", num_classes=10, timesteps=2, in_channels=1, input_size=8)
        >>> net(torch.rand(4, 1, 8, 8)).shape
        torch.Size([4, 10])
    """

    def __init__(self, arch: str, num_classes: int, timesteps: int, in_channels: int = 3,
                 input_size: int = 32, neuron: dict | None = None,
                 label_names: list[str] | None = None, normalization: dict | None = None,
                 dataset: str | None = None):
        super().__init__()
        if arch not in ARCHITECTURES:
            raise InvalidInput(unknown_architecture(arch))
        if not isinstance(timesteps, int) or timesteps < 1:
            raise InvalidInput(f"timesteps (T) must be an integer >= 1, got {timesteps!r}")
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels),
                            ("input_size", input_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidInput(f"{name} must be an integer >= 1, got {value!r}")
        neuron = dict(neuron or {})
        unknown = set(neuron) - set(NEURON_OPTIONS)
        if unknown:
            raise InvalidInput(f"unknown neuron options {sorted(unknown)}; valid: {', '.join(NEURON_OPTIONS)}")
        if label_names is not None and len(label_names) != num_classes:
            raise InvalidInput(f"{len(label_names)} label names for {num_classes} classes")
        self.arch, self.num_classes, self.timesteps = arch, num_classes, timesteps
        self.in_channels, self.input_size = in_channels, input_size
        self.label_names, self.normalization, self.dataset = label_names, normalization, dataset
        # convs initialised as the authors' code does (see models/blocks.py)
        self.body = init_weights(ARCHITECTURES[arch](num_classes, timesteps, in_channels=in_channels,
                                                     input_size=input_size, **neuron))

    def forward(self, x: Tensor, return_timesteps: bool = False) -> Tensor:
        """``x`` ``[B, C, H, W]`` (image) or ``[B, T, C, H, W]`` (event frames) -> ``[B, classes]``.

        With ``return_timesteps`` the per-timestep readout ``[T, B, classes]`` (for the TET loss).
        """
        if x.dim() == 5:
            if x.shape[1] != self.timesteps:
                raise InvalidInput(f"event input has {x.shape[1]} frames, the model runs T = {self.timesteps}")
        elif x.dim() != 4:
            raise InvalidInput(f"expected [B, C, H, W] images or [B, T, C, H, W] frames, got {list(x.shape)}")
        if x.shape[-3] != self.in_channels:
            raise InvalidInput(f"input has {x.shape[-3]} channels, the model expects {self.in_channels}")
        if (getattr(self.body, "fixed_input_size", False)
                and tuple(x.shape[-2:]) != (self.input_size, self.input_size)):
            raise InvalidInput(f"input is {x.shape[-2]}x{x.shape[-1]}; {self.arch} takes {self.input_size}x"
                             f"{self.input_size} only (its classifier flattens the last feature map)")
        if not x.is_floating_point():
            raise TypeError(f"input must be floating point (pixels in [0, 1], normalized as config.json's "
                            f"normalization says), got {x.dtype}")
        out = self.body(x)
        if out.dim() != 3 or out.shape[0] != self.timesteps or out.shape[2] != self.num_classes:
            raise InvalidInput(f"the {self.arch} body returned {list(out.shape)}; a body maps its input to "
                               f"the readout at every timestep, [T, B, classes] = [{self.timesteps}, "
                               f"{x.shape[0]}, {self.num_classes}]")
        return out if return_timesteps else out.mean(0)

    def set_runtime_options(self, *, sync_stats: bool | None = None, check_finite: bool | None = None) -> None:
        """Switch every spiking layer's batch statistics to all processes (``sync_stats``, for
        DistributedDataParallel) and/or its NaN/Inf input check (``check_finite``)."""
        for _, layer in self.neurons():
            if sync_stats is not None:
                layer.sync_stats = sync_stats
            if check_finite is not None:
                layer.check_finite = check_finite

    def neurons(self) -> Iterator[tuple[str, TdBNPLIF]]:
        """The spiking layers in forward order, with their names."""
        for name, module in self.named_modules():
            if isinstance(module, TdBNPLIF):
                yield name, module

    @property
    def config(self) -> dict:
        """What config.json holds: enough to rebuild the model."""
        return {**self._hub_mixin_config, "library": LIBRARY, "library_version": __version__}

    # -- Hub mixin conventions, with atomic writes and safetensors only ----------------------------

    def save_pretrained(self, save_directory: str | Path, *, config: dict | None = None,
                        push_to_hub: bool = False, repo_id: str | None = None, **push_kwargs) -> str | None:
        """Write ``model.safetensors`` and ``config.json`` (each atomically) into a folder."""
        save_directory = Path(save_directory)
        save_directory.mkdir(parents=True, exist_ok=True)
        self._save_pretrained(save_directory)
        atomic_write_json(save_directory / CONFIG_NAME, config or self.config)
        if push_to_hub:
            return self.push_to_hub(repo_id or save_directory.name, **push_kwargs)
        return None

    def push_to_hub(self, repo_id: str, *, commit_message: str | None = None, private: bool = False,
                    token: str | None = None, branch: str | None = None, create_pr: bool = False,
                    **unsupported) -> str:
        """Upload this model (weights, config, a generated model card) to the Hub; returns the
        commit URL, or the pull request's with ``create_pr``.

        A model loaded from a training folder (``mpdagl_triton.load("runs/x")``) brings that
        folder's metrics and plots along, so its card holds the same results as ``mpdagl push
        runs/x``'s."""
        import shutil
        import tempfile

        from mpdagl_triton.publish import push

        if unsupported:  # the mixin's file patterns and card options: the upload's files are fixed
            raise TypeError(f"push_to_hub does not take {', '.join(sorted(unsupported))}: it uploads "
                            "model.safetensors, config.json and a generated model card")
        with tempfile.TemporaryDirectory(prefix="mpdagl-model-") as folder:
            self.save_pretrained(folder)
            trained_in = getattr(self, "trained_in", None)
            if trained_in is not None:
                for name in RESULTS_FILES:
                    if (trained_in / name).is_file():
                        shutil.copy2(trained_in / name, Path(folder) / name)
                for png in [*trained_in.glob("*.png"), *trained_in.glob("analysis/*")]:
                    target = Path(folder) / png.relative_to(trained_in)
                    target.parent.mkdir(exist_ok=True)
                    shutil.copy2(png, target)
            return push(folder, repo_id, private=private, revision=branch,
                        commit_message=commit_message, token=token, create_pr=create_pr)

    def _save_pretrained(self, save_directory: Path) -> None:
        save_tensors(Path(save_directory) / WEIGHTS_NAME, self.state_dict(),
                     metadata={"format": "pt", "library": LIBRARY})

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir, force_download: bool,
                         local_files_only: bool, token, map_location: str = "cpu", strict: bool = True,
                         **model_kwargs) -> "SpikingNetwork":
        from huggingface_hub import hf_hub_download

        model = cls(**model_kwargs)
        if Path(model_id).is_dir():
            weights = Path(model_id) / WEIGHTS_NAME
        else:
            weights = hf_hub_download(repo_id=model_id, filename=WEIGHTS_NAME, revision=revision,
                                      cache_dir=cache_dir, force_download=force_download, token=token,
                                      local_files_only=local_files_only)
        tensors, _ = load_tensors(weights)
        if strict:
            load_state_strict(model, tensors, source=str(weights))
        else:  # torch's rule: names may be missing or extra, shapes must still match
            with torch.no_grad():
                model.load_state_dict(tensors, strict=False)
        return model.to(map_location).eval()


def load_state_strict(model: nn.Module, tensors: dict[str, Tensor], source: str) -> None:
    """Copy ``tensors`` into ``model``; every name and shape must match the model's config."""
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong = sorted(k for k in set(own) & set(tensors) if own[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            details.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if wrong:
            k = wrong[0]
            details.append(f"shape of {k}: file {list(tensors[k].shape)} vs config {list(own[k].shape)}")
        raise CheckpointError(f"{source} does not match the model its config describes: " + "; ".join(details))
    with torch.no_grad():
        model.load_state_dict(tensors, strict=True)
