"""Datasets and batch loading for training.

Every dataset goes through one path: a Hugging Face ``datasets`` split is decoded once into uint8
arrays (``[N, C, H, W]``) cached as Arrow next to the dataset, so later epochs and later runs never
touch PIL; event data (CIFAR10-DVS) becomes float16 frames ``[N, T, 2, 48, 48]`` stored with
``save_to_disk``. :class:`Loader` batches a split: on a GPU the whole split lives there and is
shuffled and augmented there; on the CPU a ``DataLoader`` gathers batches (``workers`` processes).
Shuffling draws from a generator seeded by (seed, epoch), so an epoch's batches are the same
whether or not the run was interrupted before it; ``Loader.position`` holds what continues them
exactly from the middle of an epoch (a mid-epoch resume point's).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import sys
from importlib import resources
from typing import Generator, Iterator

import numpy as np
import torch
from torch import Tensor

from mpdagl_triton import augment as augmentations
from mpdagl_triton.errors import InvalidInput, Unavailable

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class DataUnavailableError(Unavailable):
    """A dataset could not be fetched or read."""


class CorruptImageError(InvalidInput):
    """An image in a dataset cannot be decoded."""


@dataclasses.dataclass
class Split:
    images: Tensor  # uint8 [N, C, H, W] images, or float16 [N, T, C, H, W] event frames
    labels: Tensor  # int64 [N]

    def __post_init__(self):
        if self.images.dtype not in (torch.uint8, torch.float16):
            raise TypeError(f"images must be uint8 (images) or float16 (event frames), got {self.images.dtype}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    label_names: list[str]
    mean: tuple[float, ...]  # per channel, of images scaled to [0, 1] (0 and 1 for event counts)
    std: tuple[float, ...]
    augmentation: str = "none"  # see augment.build
    test_split: str = "test"  # the split ``test`` holds, as the dataset's repo names it

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def is_events(self) -> bool:
        return self.train.images.dim() == 5

    @property
    def in_channels(self) -> int:
        return self.train.images.shape[-3]

    @property
    def input_size(self) -> int:
        return self.train.images.shape[-1]

    @property
    def normalization(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}

    def batches(self, split: str = "train", batch_size: int = 64, *, device: str | torch.device = "cpu",
                seed: int = 0, epoch: int = 1, time_major: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch of ``(inputs, labels)`` for a training loop of your own, as ``mpdagl train``
        feeds its models: float inputs normalized by the dataset's mean and std, labels int64
        ``[B]``, on ``device``.

        ``split="train"``: shuffled by (seed, epoch), with the dataset's training augmentation,
        full batches only; ``split="test"``: in order, unchanged. Images come as ``[B, C, H, W]``,
        event frames as ``[B, T, C, H, W]`` (what :class:`~mpdagl_triton.models.SpikingNetwork`
        takes), or ``[T, B, C, H, W]`` with ``time_major=True``.

        Example:
            >>> digits = load("digits")
            >>> images, labels = next(digits.batches("train", 32))
            >>> images.shape, images.dtype, labels.shape
            (torch.Size([32, 1, 8, 8]), torch.float32, torch.Size([32]))
        """
        if split not in ("train", "test"):
            raise InvalidInput(f"split must be 'train' or 'test', got {split!r}")
        loader = Loader(self.train if split == "train" else self.test, self, batch_size,
                        torch.device(device), train=split == "train")
        for inputs, labels in loader.epoch(seed, epoch):
            yield (inputs.transpose(0, 1) if time_major and inputs.dim() == 5 else inputs), labels


@dataclasses.dataclass(frozen=True)
class HubDataset:
    """What is known of a named dataset, whatever a local copy's README says: its columns (unless
    --image-column / --label-column), its held-out split as its repo names it, its channels, its
    augmentation, and its mean and std (None: measured on the training images)."""

    repo: str
    image_column: str
    label_column: str
    test_split: str
    augmentation: str
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    channels: int = 3


HUB_DATASETS = {
    "cifar10": HubDataset("uoft-cs/cifar10", "img", "label", "test", "cifar", CIFAR_MEAN, CIFAR_STD),
    "cifar100": HubDataset("uoft-cs/cifar100", "img", "fine_label", "test", "cifar", CIFAR_MEAN, CIFAR_STD),
    "tiny-imagenet": HubDataset("zh-plus/tiny-imagenet", "image", "label", "valid", "crop-flip",
                                IMAGENET_MEAN, IMAGENET_STD),
}
DIGITS = HubDataset("", "image", "label", "test", "none", None, None, channels=1)
NAMED = ("digits", "cifar10", "cifar100", "tiny-imagenet", "cifar10-dvs")
TEST_SPLITS = ("test", "valid", "validation")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")  # decoded as one channel; any other mode as RGB
#: what ``hf download --local-dir`` leaves at the top of a dataset's copy
COPY_MARKERS = ("README.md", ".gitattributes", ".cache/huggingface")


def available() -> list[str]:
    """Named datasets; any Hub id ("user/name") or local folder in the Hub's layout works too."""
    return list(NAMED)


def check_name(name: str) -> None:
    """Refuse, in one line, a dataset that is neither a named one, an existing folder nor a Hub id.

    A name that can only be a path (``./x``, ``/x``, ``~/x``, ``a/b/c``) must exist: a missing
    folder would otherwise be sent to the Hub as a repo id.

    Example:
        >>> check_name("cifar10"), check_name("user/name")
        (None, None)
    """
    if name in NAMED or os.path.isdir(os.path.expanduser(name)):
        return
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name:
        raise InvalidInput(f"dataset folder {name} does not exist; check the path (a Hub dataset is "
                           "named user/name)")
    if "/" not in name:
        raise InvalidInput(f"unknown dataset {name!r}; available: {', '.join(NAMED)}, or a Hub id "
                           "(user/name) or a local folder")


@contextlib.contextmanager
def _progress_bars(show: bool) -> Iterator[None]:
    """``datasets``' progress bars on or off for a while (a log file gets no bars)."""
    import datasets

    shown = datasets.is_progress_bar_enabled()
    if shown and not show:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if shown and not show:
            datasets.enable_progress_bars()


def load(name: str, *, path: str | None = None, timesteps: int | None = None,
         image_column: str | None = None, label_column: str | None = None,
         dvs_split: str | None = None, dvs_frames: str | None = None) -> Dataset:
    """Load a dataset by name, Hub id or local folder.

    Args:
        name: ``digits``, ``cifar10``, ``cifar100``, ``tiny-imagenet``, ``cifar10-dvs``, a Hub id
            (``user/name``) or a local folder in the Hub's layout (parquet shards + README).
        path: read a named dataset from this local folder instead of the Hub (for ``cifar10-dvs``:
            the folder of per-class ``.aedat`` folders, required).
        timesteps: frames per sample (``cifar10-dvs`` only).
        image_column, label_column: override the columns (required when they can't be guessed).
        dvs_split, dvs_frames: ``cifar10-dvs`` only: the train/test split and the frame rule
            (``events.SPLITS``, ``events.FRAME_RULES``; None: their defaults).
    """
    with _progress_bars(sys.stderr.isatty()):
        return _load(name, path, timesteps, image_column, label_column, dvs_split, dvs_frames)


def _load(name, path, timesteps, image_column, label_column, dvs_split, dvs_frames) -> Dataset:
    check_name(name)
    if name == "digits":
        if path is not None:  # likely meant: train on that folder
            raise InvalidInput(f"digits ships with the package and reads no --data-path ({path}); to train on "
                               f"a local folder pass it as the dataset: --dataset {path}")
        return _from_hub_layout("digits", _digits_source(), DIGITS, None, None)
    if name == "cifar10-dvs":
        return _cifar10_dvs(path, timesteps, dvs_split, dvs_frames)
    spec = HUB_DATASETS.get(name)
    source = _fetch(name, spec.repo if spec else name, path)
    return _from_hub_layout(name, source, spec, image_column, label_column)


def _fetch(name: str, repo: str, path: str | None):
    import datasets

    source = path or repo
    if os.path.isdir(source):
        return datasets.load_dataset(source, data_files=_local_data_files(source))
    if path is not None:
        raise InvalidInput(f"--data-path {path} is not a folder; pass the folder that "
                           f"`hf download {repo} --repo-type dataset --local-dir DIR` made")
    try:
        return datasets.load_dataset(source)
    except Exception as exc:  # offline, missing, unreachable: one clear message
        raise DataUnavailableError(
            f"could not fetch dataset {repo!r} ({name}) from the Hugging Face Hub, and there is no "
            f"cached copy: {type(exc).__name__}: {exc}. To use a local copy, download it where you "
            f"have network (`hf download {repo} --repo-type dataset --local-dir DIR`) "
            "and pass --data-path DIR (Python: data.load(name, path=DIR))."
        ) from exc


def _local_data_files(folder: str) -> dict[str, list[str]]:
    """The folder's data files by split, as ``datasets`` resolves them.

    ``datasets`` names its cache of a local folder whose README lists ``configs:`` after the
    README alone, so shards replaced in place would load the old copy; files passed by name are
    keyed on their modification times too. A folder holding several copies (each with its own
    README) would be read as one dataset of every copy's shards: refused, naming the copies.
    """
    import datasets
    from datasets.data_files import EmptyDatasetError
    from datasets.exceptions import DataFilesNotFoundError

    try:
        resolved = datasets.load_dataset_builder(folder).config.data_files
    except (EmptyDatasetError, DataFilesNotFoundError) as exc:
        raise InvalidInput(f"{folder} holds no data files; pass the folder that `hf download REPO --repo-type "
                           "dataset --local-dir DIR` made, or a folder of split/class/image files") from exc
    files = {split: list(paths) for split, paths in resolved.items()}
    copies = sorted({_copy_root(folder, path) for paths in files.values() for path in paths} - {None})
    if len(copies) > 1:
        raise InvalidInput(f"{folder} holds {len(copies)} datasets ({', '.join(copies)}), read as one; "
                           f"pass one of them: {' or '.join(os.path.join(folder, c) for c in copies)}")
    return files


def _copy_root(folder: str, path: str) -> str | None:
    """The outermost subfolder of ``folder`` above ``path`` that is a downloaded copy of its own
    (``COPY_MARKERS``), relative to ``folder``; None when there is none."""
    top = os.path.abspath(folder)
    relative = os.path.relpath(os.path.abspath(path), top).split(os.sep)[:-1]
    for depth in range(1, len(relative) + 1):
        if any(os.path.exists(os.path.join(top, *relative[:depth], m)) for m in COPY_MARKERS):
            return os.path.join(*relative[:depth])
    return None


def _digits_source():
    """scikit-learn's handwritten digits (1797 8x8 images, 0-16 ink levels), shipped with us, as a
    Hub-style DatasetDict; split deterministically: a fixed permutation (seed 0), 80% train."""
    import datasets

    with resources.files("mpdagl_triton").joinpath("assets/digits.npz").open("rb") as f:
        arrays = np.load(f, allow_pickle=False)
        images = (arrays["images"].astype(np.float32) * (255.0 / 16.0)).round().astype(np.uint8)
        labels = arrays["labels"].astype(np.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0)).numpy()
    n_train = int(0.8 * len(labels))
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=[str(d) for d in range(10)])})
    return datasets.DatasetDict({
        split: datasets.Dataset.from_dict({"image": list(images[idx]), "label": labels[idx]}, features=features)
        for split, idx in (("train", order[:n_train]), ("test", order[n_train:]))
    })


def _is_images(feature) -> bool:
    """An Image column, or the struct of bytes and path that plain pyarrow writes for one (its
    ``path`` of type null when every path is None), which ``datasets`` casts to Image."""
    import datasets

    return isinstance(feature, datasets.Image) or (
        isinstance(feature, dict) and set(feature) == {"bytes", "path"}
        and getattr(feature["bytes"], "dtype", None) in ("binary", "large_binary"))


def _is_class_label(feature) -> bool:
    import datasets

    return isinstance(feature, datasets.ClassLabel)


def _pick_column(split, given: str | None, default: str | None, kind: str, is_kind,
                 fallbacks: tuple[str, ...]) -> str:
    """``given`` (``--{kind}-column``), else the named dataset's ``default`` where the copy has it,
    else the first of the usual names in ``fallbacks``; for any other dataset the only column of
    its kind comes before those names (a named dataset's other columns of that kind, such as
    CIFAR-100's coarse labels, are never taken by type)."""
    columns = list(split.features)
    if given is not None:
        if given not in columns:
            raise InvalidInput(f"no {kind} column {given!r}; available columns: {', '.join(columns)}")
        return given
    if default in columns:
        return default
    typed = [] if default else [c for c, f in split.features.items() if is_kind(f)]
    named = [c for c in fallbacks if c in columns]
    if len(typed) == 1:
        return typed[0]
    if named:
        return named[0]
    raise InvalidInput(f"cannot tell which column holds the {kind}s; pass --{kind}-column "
                       f"(available columns: {', '.join(columns)})")


def _test_split(name: str, source, spec: HubDataset | None) -> tuple[str, str]:
    """(the key of the held-out split in ``source``, its name in the dataset's repo).

    A named dataset's split is found under its repo's name or under the one ``datasets`` gives a
    shard of that name when no README ``configs:`` lists it (``valid-*.parquet``: ``validation``);
    any other dataset's is the first of ``TEST_SPLITS`` it has.
    """
    from datasets.data_files import SPLIT_KEYWORDS

    if spec is None:
        found = next((s for s in TEST_SPLITS if s in source), None)
        if found is None:
            raise InvalidInput(f"dataset {name!r} has no test split ({' / '.join(TEST_SPLITS)}); splits: "
                               f"{', '.join(source)}: name the held-out shards test-*.parquet")
        return found, found
    inferred = [str(split) for split, keywords in SPLIT_KEYWORDS.items() if spec.test_split in keywords]
    for key in (spec.test_split, *inferred):
        if key in source:
            return key, spec.test_split
    raise InvalidInput(f"dataset {name!r} has no {spec.test_split!r} split (splits: {', '.join(source)}); "
                       f"pass the folder that `hf download {spec.repo} --repo-type dataset --local-dir DIR` made")


def _from_hub_layout(name: str, source, spec: HubDataset | None, image_column: str | None,
                     label_column: str | None) -> Dataset:
    import datasets

    if "train" not in source:
        raise InvalidInput(f"dataset {name!r} has no 'train' split (splits: {', '.join(source)}): "
                           "name the training shards train-*.parquet")
    test_key, test_split = _test_split(name, source, spec)
    train_raw = source["train"]
    if not len(train_raw):
        raise InvalidInput(f"dataset {name!r}: the train split is empty")
    image_column = _pick_column(train_raw, image_column, spec and spec.image_column, "image", _is_images,
                                ("img", "image"))
    label_column = _pick_column(train_raw, label_column, spec and spec.label_column, "label", _is_class_label,
                                ("label", "labels", "fine_label"))
    if not _is_images(train_raw.features[image_column]):
        raise InvalidInput(f"column {image_column!r} of {name!r} holds {train_raw.features[image_column]}, "
                           f"not images; available columns: {', '.join(train_raw.features)}")
    shape = _image_shape(name, train_raw, image_column, spec.channels if spec else None)
    label_feature = train_raw.features[label_column]
    label_index = None
    if isinstance(label_feature, datasets.Value) and label_feature.dtype in ("string", "large_string"):
        # class names as text: classes in sorted order, as ClassLabel and folder layouts have them
        names = sorted(set(train_raw.unique(label_column)) | set(source[test_key].unique(label_column)))
        label_index = {label: i for i, label in enumerate(names)}
    train = _decode(name, "train", train_raw, image_column, label_column, shape, label_index)
    test = _decode(name, test_split, source[test_key], image_column, label_column, shape, label_index)
    if isinstance(label_feature, datasets.ClassLabel):
        label_names = list(label_feature.names)
    elif label_index is not None:
        label_names = list(label_index)
    else:
        label_names = [str(i) for i in range(int(max(train.labels.max(), test.labels.max())) + 1)]
    for split_name, split in (("train", train), (test_split, test)):
        if len(split) and (split.labels.min() < 0 or split.labels.max() >= len(label_names)):
            raise InvalidInput(f"{name} {split_name}: labels outside [0, {len(label_names)}); "
                               f"is {label_column!r} the label column? (--label-column)")
    mean, std = (spec.mean, spec.std) if spec and spec.mean else _measured(train)
    augmentation = spec.augmentation if spec else "crop-flip"
    return Dataset(name, train, test, label_names, tuple(mean), tuple(std), augmentation, test_split)


def _measured(train: Split) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the training images scaled to [0, 1]; from sums over chunks of
    images, not a float copy of the whole split."""
    channels = train.images.shape[1]
    sums = torch.zeros(2, channels, dtype=torch.float64)
    for chunk in train.images.split(1024):
        pixels = chunk.float()
        sums += torch.stack([pixels.sum(dim=(0, 2, 3)), pixels.square_().sum(dim=(0, 2, 3))]).double()
    n = train.images.numel() // channels
    mean = sums[0] / n
    std = ((sums[1] - n * mean.square()) / (n - 1)).sqrt()  # unbiased, as torch.std
    return (tuple(round(v, 4) for v in (mean / 255).tolist()), tuple(round(v, 4) for v in (std / 255).tolist()))


def _image_shape(name: str, split, column: str, channels: int | None) -> tuple[int, int, int]:
    """(C, H, W): the size of the first image; ``channels`` when the dataset's are known, else 3 if
    any image of the split is in colour (1 when all are greyscale), whatever the first ones are.
    The modes come from the images' headers, read once and cached by ``datasets``."""
    from PIL import Image

    undecoded = split.cast_column(column, _undecoded()).select_columns([column])
    width, height = _open(undecoded[0][column], name, "train", 0, Image).size
    if channels is None:
        def modes(batch, indices):
            return {"mode": [_open(item, name, "train", i, Image, load=False).mode
                             for item, i in zip(batch[column], indices)]}

        found = undecoded.map(modes, batched=True, with_indices=True, remove_columns=[column],
                              desc=f"reading {name} train image modes (once)").unique("mode")
        channels = 1 if set(found) <= set(GREY_MODES) else 3
    return channels, height, width


def _undecoded():
    import datasets

    return datasets.Image(decode=False)


def _open(item: dict, name: str, split: str, index: int, image_module, load: bool = True):
    """The image of an undecoded Image cell; with ``load`` False only its header is read."""
    try:
        if item.get("bytes"):
            image = image_module.open(io.BytesIO(item["bytes"]))
        else:
            image = image_module.open(item["path"])
        if load:
            image.load()
        return image
    except Exception as exc:
        raise CorruptImageError(f"{name} {split}: image {index} cannot be decoded: {exc}") from exc


def _decode(name: str, split_name: str, split, image_column: str, label_column: str,
            shape: tuple[int, int, int], label_index: dict[str, int] | None = None) -> Split:
    """uint8 ``[N, C, H, W]`` + int64 labels (text labels mapped by ``label_index``), decoded once
    and cached as Arrow by ``datasets``."""
    import datasets
    from PIL import Image

    channels, height, width = shape
    mode = "L" if channels == 1 else "RGB"

    def decode(batch, indices):
        pixels = []
        for item, index in zip(batch[image_column], indices):
            image = _open(item, name, split_name, index, Image).convert(mode)
            if image.size != (width, height):
                raise CorruptImageError(f"{name} {split_name}: image {index} is {image.size[0]}x{image.size[1]}, "
                                        f"the others {width}x{height}")
            array = np.asarray(image, dtype=np.uint8)
            pixels.append(array[None] if channels == 1 else array.transpose(2, 0, 1))
        labels = batch[label_column]
        return {"pixels": pixels, "label": [label_index[v] for v in labels] if label_index else labels}

    features = datasets.Features({"pixels": datasets.Array3D((channels, height, width), "uint8"),
                                  "label": datasets.Value("int64")})
    # an in-memory split (digits) is decoded at every load in a blink: no bar for it
    with _progress_bars(bool(split.cache_files)):
        decoded = split.cast_column(image_column, _undecoded()).map(
            decode, batched=True, with_indices=True, remove_columns=split.column_names,
            features=features, desc=f"decoding {name} {split_name} (once)",
        )
    if len(decoded) != len(split):  # never train on a silently shortened split
        raise DataUnavailableError(f"{name} {split_name}: decoded {len(decoded)} of {len(split)} images")
    return Split(*_tensors(decoded, shape))


def _tensors(decoded, shape: tuple[int, int, int]) -> tuple[Tensor, Tensor]:
    """The decoded images and labels, copied once out of the memory-mapped Arrow cache (numpy
    formatting of an Array3D column goes through Python lists: 10x the split in memory or more)."""
    table = decoded.with_format("arrow")[:]
    images = torch.empty((len(table), *shape), dtype=torch.uint8)
    start, out = 0, images.numpy()
    for chunk in table.column("pixels").chunks:  # list<list<list<uint8>>>, one image a row
        out[start:start + len(chunk)] = chunk.storage.flatten().flatten().flatten().to_numpy().reshape(-1, *shape)
        start += len(chunk)
    return images, torch.tensor(table.column("label").to_numpy(), dtype=torch.int64)


def _cifar10_dvs(path: str | None, timesteps: int | None, split: str | None = None,
                 frame_rule: str | None = None) -> Dataset:
    from mpdagl_triton import events

    if path is None:
        raise DataUnavailableError(
            "cifar10-dvs has no Hub copy: download the original release (one folder per class of "
            ".aedat files) and pass --data-path DIR; see the README's data section")
    if not timesteps or timesteps < 1:
        raise ValueError("cifar10-dvs needs the number of frames (T >= 1)")
    frames = events.build_frames_dataset(path, timesteps, rule=frame_rule or events.DEFAULT_FRAME_RULE,
                                         split=split or events.DEFAULT_SPLIT)
    names = frames.features["label"].names
    columns = frames.with_format("numpy", columns=["label", "train"])[:]
    is_train = torch.from_numpy(columns["train"].astype(bool))
    labels = torch.from_numpy(columns["label"].astype(np.int64))
    images = torch.from_numpy(frames.with_format("numpy", columns=["frames"], dtype=np.float16)[:]["frames"])
    zeros, ones = (0.0,) * 2, (1.0,) * 2  # event counts are fed as they are
    return Dataset("cifar10-dvs", Split(images[is_train], labels[is_train]),
                   Split(images[~is_train], labels[~is_train]), names, zeros, ones, "dvs")


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The RNG of one epoch's shuffling and augmentation, independent of every other epoch."""
    return torch.Generator().manual_seed(epoch_seed(seed, epoch))


class _Gather(torch.utils.data.Dataset):
    def __init__(self, split: Split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        return self.split.images[index], self.split.labels[index]


#: Elements (one CIFAR-10 image: 3,072) augmented per call: the augmentation's cost is per call
#: on a GPU (``augment.ImageAugment``), so training batches are augmented several at a time, up
#: to this many elements (4,096 CIFAR images, 48 MiB as float32).
AUGMENT_CHUNK_ELEMENTS = 4096 * 3 * 32 * 32


class Loader:
    """Batches ``(float images normalized on device, int64 labels)`` of one split.

    Training batches get the dataset's augmentation (see :mod:`mpdagl_triton.augment`) on the
    device, several batches per call (up to ``augment_chunk_elements``); every batch is then
    normalized by the dataset's mean and std. With ``interleave`` (the default) the next chunk is
    augmented a few pieces at a time after each batch of the current one, instead of all at once
    when its first batch is asked for; after an epoch's last chunk comes the first of the next
    epoch, used when ``epoch(seed, epoch + 1)`` is asked for next.

    With several processes (``world`` > 1), ``batch_size`` is the global batch: every process
    walks the same permutation and takes its contiguous share of each training batch, so the
    global batches equal those of one process; test batches are dealt out whole, round robin.
    """

    def __init__(self, split: Split, dataset: Dataset, batch_size: int, device: torch.device,
                 train: bool, workers: int = 0, rank: int = 0, world: int = 1,
                 augment_chunk_elements: int | None = None, interleave: bool = True):
        if batch_size < 1:
            raise InvalidInput(f"batch size must be >= 1, got {batch_size}")
        if train and batch_size % world:
            raise InvalidInput(f"batch size {batch_size} does not split evenly over {world} processes")
        if train and world > 1 and len(split) < batch_size:  # one short batch: uneven or empty shares
            raise InvalidInput(f"the training split has {len(split)} images, fewer than the global batch "
                               f"size {batch_size} that {world} processes share; lower --batch-size")
        self.split, self.batch_size, self.device, self.train = split, batch_size, device, train
        self.workers, self.rank, self.world = workers, rank, world
        self.augment_chunk_elements = augment_chunk_elements or AUGMENT_CHUNK_ELEMENTS
        self.interleave = interleave
        self._ahead: _EpochPlan | None = None  # the next epoch, its first chunk started in this one's last
        #: where the epoch being iterated stands after the batch last handed out (a resume point's)
        self.position: Position | None = None
        # its random choices are drawn on the CPU and shipped without a sync, and nothing is read
        # back from the device (tests/test_data.py checks it): the host augments the next chunk
        # while the GPU trains
        self.augment = augmentations.build(dataset.augmentation, dataset.input_size) if train else None
        shape = (1, 1, -1, 1, 1) if dataset.is_events else (1, -1, 1, 1)
        self.mean = torch.tensor(dataset.mean, device=device).reshape(shape)
        self.std = torch.tensor(dataset.std, device=device).reshape(shape)
        self.on_device = device.type != "cpu"
        if self.on_device:  # the whole uint8 split stays on the GPU: no host work per batch
            self.images = split.images.to(device)
            self.labels = split.labels.to(device)

    def __len__(self) -> int:
        n = len(self.split)
        batches = n // self.batch_size if self.train and n >= self.batch_size else -(-n // self.batch_size)
        if self.world > 1 and not self.train:
            return len(range(self.rank, batches, self.world))
        return batches

    def epoch(self, seed: int, epoch: int, start: Position | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """The epoch's batches, from the first or, given ``start`` (a :attr:`position` saved
        mid-epoch), from where that position stands: the same batches, augmented the same, as
        those an uninterrupted epoch hands out from there, when ``start`` was saved with as many
        processes (else the rest of the epoch with draws of its own)."""
        plan, self._ahead = self._ahead, None
        if plan is None or plan.key != (seed, epoch) or (start is not None and start.batch):
            plan = self._plan(seed, epoch, start)
        upcoming = plan.first
        index = plan.offset  # the epoch's index of the batch handed out next
        for k, chunk in enumerate(plan.chunks):
            if upcoming is None:  # nothing to train on meanwhile
                upcoming = next(plan.prepared)
            current = upcoming
            images, labels = current.finish()
            # the next chunk's augmentation, a few pieces after each of this chunk's batches: the
            # host never issues a whole call's dispatches at once, which would fill CUDA's launch
            # queue behind the queued steps and leave the GPU idle for the call's remainder; after
            # the epoch's last chunk comes the next epoch's first
            if k + 1 < len(plan.chunks):
                upcoming = next(plan.prepared)
            elif self.augment is not None:
                self._ahead = self._plan(seed, epoch + 1)
                upcoming = self._ahead.first = next(self._ahead.prepared)
            else:
                upcoming = None
            sizes = [len(batch) for batch in chunk]
            pieces_per_batch = -(-self._pieces() // len(chunk)) if self.interleave else 0
            chunk_start, last = index, index + len(chunk)
            for batch in zip(images.split(sizes), labels.split(sizes)):
                index += 1
                if plan.skip:  # handed out before the position this epoch resumed from
                    plan.skip -= 1
                else:
                    # past this chunk's last batch, the next chunk continues the epoch; it began
                    # its preparation after this one's finished
                    following = current if index < last else upcoming if k + 1 < len(plan.chunks) else None
                    self.position = Position(index, chunk_start if index < last else last,
                                             following.began if following is not None else None)
                    yield batch
                if upcoming is not None:
                    upcoming.advance(pieces_per_batch)

    def _plan(self, seed: int, epoch: int, start: Position | None = None) -> _EpochPlan:
        """One epoch's chunks of batches, and their preparation, started chunk by chunk; from the
        chunk that holds ``start``'s next batch when given (no earlier chunk is prepared)."""
        gen = epoch_generator(seed, epoch)
        n = len(self.split)
        order = torch.randperm(n, generator=gen) if self.train else torch.arange(n)
        if self.on_device:  # one copy of the epoch's order; batches are slices of it on the GPU
            order = order.to(self.device, non_blocking=True)
        batches = [order[i:i + self.batch_size] for i in range(0, n, self.batch_size)]
        if self.train and n >= self.batch_size and len(batches[-1]) < self.batch_size:
            batches.pop()  # full batches only: stable statistics and one compiled shape
        if self.world > 1:
            if self.train:
                share = self.batch_size // self.world
                batches = [b[self.rank * share:(self.rank + 1) * share] for b in batches]
                gen = torch.Generator().manual_seed(epoch_seed(seed, epoch) * 1009 + self.rank)
            else:
                batches = batches[self.rank::self.world]
        per_chunk = self._batches_per_chunk(len(batches[0]) if batches else 1)
        offset = 0
        if start is not None:
            # the generator as it was when that chunk's preparation began: the draws of the
            # chunks before it are not made again; a position without it (saved with another
            # number of processes, whose chunks and generators differ) continues with fresh draws
            if start.generator is not None:
                offset = start.chunk_start
                gen.set_state(start.generator)
            else:
                offset = min(start.batch, len(batches))
            batches = batches[offset:]
        chunks = [batches[i:i + per_chunk] for i in range(0, len(batches), per_chunk)]
        # one batch's indices as they are: a cat of one would copy them (a device kernel per batch)
        indices = [chunk[0] if len(chunk) == 1 else torch.cat(chunk) for chunk in chunks]
        prepared = (_InPieces(self._prepare(images, labels, gen), gen) for images, labels in self._gather(indices))
        skip = start.batch - offset if start is not None else 0
        return _EpochPlan((seed, epoch), chunks, prepared, offset=offset, skip=max(skip, 0))

    def _batches_per_chunk(self, batch_size: int) -> int:
        """Training batches augmented together (one batch without augmentation)."""
        if self.augment is None:
            return 1
        elements = math.prod(self.split.images.shape[1:]) * batch_size
        return max(1, self.augment_chunk_elements // elements)

    def _gather(self, chunks: list[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
        if self.on_device:
            for index in chunks:
                yield self.images[index], self.labels[index]
            return
        loader = torch.utils.data.DataLoader(_Gather(self.split), batch_sampler=chunks,
                                             num_workers=self.workers)
        for images, labels in loader:
            yield images.to(self.device), labels.to(self.device)

    def _pieces(self) -> int:
        return 1 if self.augment is None else self.augment.pieces

    def _prepare(self, images: Tensor, labels: Tensor,
                 gen: torch.Generator) -> Generator[None, None, tuple[Tensor, Tensor]]:
        """A chunk's augmentation and normalization, in ``_pieces()`` pieces (``augment.steps``)."""
        if self.augment is not None:
            x = yield from self.augment.steps(images, gen)
        elif images.dtype == torch.uint8:
            x = images.float() / 255
        else:
            x = images.float()
        return (x - self.mean) / self.std, labels


@dataclasses.dataclass
class Position:
    """How far an epoch's training batches have gone, and what continues them exactly: the state
    of the epoch's generator when the preparation of the chunk holding the next batch began (None
    where no chunk follows). Per process: each draws its own."""

    batch: int  # batches handed out
    chunk_start: int  # the epoch's index of the first batch of the chunk holding the next one
    generator: Tensor | None = None


@dataclasses.dataclass
class _EpochPlan:
    key: tuple[int, int]  # (seed, epoch)
    chunks: list[list[Tensor]]  # the batches' indices, chunk by chunk
    prepared: Iterator[_InPieces]  # each chunk's preparation, started when drawn
    first: _InPieces | None = None  # the first chunk's, when started during the previous epoch
    offset: int = 0  # the epoch's index of the first chunk's first batch (a resumed epoch's)
    skip: int = 0  # batches of the first chunk handed out before the resume


class _InPieces:
    """One chunk's preparation (``Loader._prepare``), run a few pieces at a time."""

    def __init__(self, work: Generator, gen: torch.Generator):
        self.work, self.done, self.result = work, False, None
        # made after the previous chunk's preparation finished, before this one's starts: what
        # continues the epoch from this chunk (``Position``)
        self.began = gen.get_state()

    def advance(self, pieces: int) -> None:
        if self.done:  # an exhausted generator would return None
            return
        for _ in range(pieces):
            try:
                next(self.work)
            except StopIteration as stop:
                self.done, self.result = True, stop.value
                return

    def finish(self):
        """The rest of the work; its result."""
        while not self.done:
            self.advance(1 << 30)
        return self.result
