"""Datasets and batch loading for training.

Every dataset is decoded once into uint8 tensors (``[N, C, H, W]`` images or ``[N, T, C, H, W]``
event frames) plus int64 labels. :class:`Loader` batches them: on CUDA the whole split lives on
the GPU and is shuffled there; on the CPU a ``DataLoader`` gathers batches (``workers`` processes).
Shuffling and augmentation draw from a generator seeded by (seed, epoch), so an epoch's batches
are the same whether or not the run was interrupted before it.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor


@dataclasses.dataclass
class Split:
    images: Tensor  # uint8 [N, C, H, W] or [N, T, C, H, W]
    labels: Tensor  # int64 [N]

    def __post_init__(self):
        if self.images.dtype != torch.uint8:
            raise TypeError(f"images must be uint8, got {self.images.dtype}")
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
    mean: tuple[float, ...]  # per channel, of images scaled to [0, 1]
    std: tuple[float, ...]
    augmentation: str = "none"  # "none" | "cifar" | "dvs" (applied to training batches)

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


def _digits(**_: object) -> Dataset:
    """scikit-learn's handwritten digits (1797 8x8 images, 0-16 ink levels), shipped with us.

    Split deterministically: a fixed permutation (seed 0), the first 80% train, the rest test.
    """
    with resources.files("mpdagl_triton").joinpath("assets/digits.npz").open("rb") as f:
        arrays = np.load(f, allow_pickle=False)
        images = torch.from_numpy((arrays["images"].astype(np.float32) * (255.0 / 16.0)).round())
        labels = torch.from_numpy(arrays["labels"].astype(np.int64))
    images = images.to(torch.uint8).unsqueeze(1)  # [N, 1, 8, 8]
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    n_train = int(0.8 * len(labels))
    train, test = order[:n_train], order[n_train:]
    scaled = images[train].float() / 255
    return Dataset(
        name="digits",
        train=Split(images[train], labels[train]),
        test=Split(images[test], labels[test]),
        label_names=[str(d) for d in range(10)],
        mean=(round(scaled.mean().item(), 4),),
        std=(round(scaled.std().item(), 4),),
    )


DATASETS: dict[str, Callable[..., Dataset]] = {"digits": _digits}


def available() -> list[str]:
    return sorted(DATASETS)


def load(name: str, **options) -> Dataset:
    """Load dataset ``name`` (see :func:`available`)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(available())}")
    return DATASETS[name](**options)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The RNG of one epoch's shuffling and augmentation, independent of every other epoch."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class _Gather(torch.utils.data.Dataset):
    def __init__(self, split: Split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        return self.split.images[index], self.split.labels[index]


class Loader:
    """Batches ``(float images normalized on device, int64 labels)`` of one split.

    Args:
        augment: called on each training batch ``(uint8 images on device, generator)``; returns
            float images in [0, 1]. None means plain scaling.
    """

    def __init__(self, split: Split, dataset: Dataset, batch_size: int, device: torch.device,
                 train: bool, workers: int = 0,
                 augment: Callable[[Tensor, torch.Generator], Tensor] | None = None):
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        self.split, self.batch_size, self.device, self.train = split, batch_size, device, train
        self.workers, self.augment = workers, augment
        shape = (1, 1, -1, 1, 1) if dataset.is_events else (1, -1, 1, 1)
        self.mean = torch.tensor(dataset.mean, device=device).reshape(shape)
        self.std = torch.tensor(dataset.std, device=device).reshape(shape)
        self.on_device = device.type == "cuda"
        if self.on_device:  # the whole uint8 split stays on the GPU: no host work per batch
            self.images = split.images.to(device)
            self.labels = split.labels.to(device)

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.train and n >= self.batch_size else -(-n // self.batch_size)

    def epoch(self, seed: int, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        gen = epoch_generator(seed, epoch)
        n = len(self.split)
        order = torch.randperm(n, generator=gen) if self.train else torch.arange(n)
        batches = [order[i:i + self.batch_size] for i in range(0, n, self.batch_size)]
        if self.train and n >= self.batch_size and len(batches[-1]) < self.batch_size:
            batches.pop()  # full batches only: stable statistics and one compiled shape
        for images, labels in self._gather(batches):
            yield self._prepare(images, gen), labels

    def _gather(self, batches: list[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
        if self.on_device:
            for index in batches:
                index = index.to(self.device)
                yield self.images[index], self.labels[index]
            return
        loader = torch.utils.data.DataLoader(_Gather(self.split), batch_sampler=batches,
                                             num_workers=self.workers)
        for images, labels in loader:
            yield images.to(self.device), labels.to(self.device)

    def _prepare(self, images: Tensor, gen: torch.Generator) -> Tensor:
        if self.train and self.augment is not None:
            x = self.augment(images, gen)
        else:
            x = images.float() / 255
        return (x - self.mean) / self.std
