"""Training augmentation on the training device, per sample, on whole batches.

Images arrive as uint8 ``[B, C, H, W]`` and leave as float in [0, 1]; event frames arrive as float
``[B, T, C, H, W]`` counts. Our own random choices are drawn on the CPU from the epoch's generator
and shipped to the device (no host sync in the step); kornia draws from torch's global generator,
which the trainer seeds from (seed, epoch) at the start of every epoch. Either way an epoch's
augmentation does not depend on whether the run was resumed.
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
from kornia.augmentation.auto import AutoAugment
from torch import Tensor, nn


class ImageAugment(nn.Module):
    """Random crop with zero padding, horizontal flip, and optionally AutoAugment (CIFAR10 policy).

    Everything draws per image: crop, flip, and AutoAugment's sub-policy (each of the 25 is then
    applied once, to all the images that drew it). The cost is per call, not per image, on a GPU
    (a kornia call is a few milliseconds of host time and a few dozen small launches): 26 calls
    however many images, so the loader augments several batches at once (``Loader``).
    """

    def __init__(self, size: int, padding: int, autoaugment: bool):
        super().__init__()
        self.crop_flip = K.AugmentationSequential(
            K.RandomCrop((size, size), padding=padding), K.RandomHorizontalFlip())
        self.subpolicies = None
        if autoaugment:
            self.subpolicies = nn.ModuleList(m for _, m in AutoAugment("cifar10").named_children())

    def forward(self, images: Tensor, generator: torch.Generator) -> Tensor:
        x = self.crop_flip(images.float() / 255)
        if self.subpolicies is None:
            return x
        # drawn on the CPU from the epoch's generator: the images of each sub-policy are known
        # without a device sync
        choice = torch.randint(len(self.subpolicies), (len(x),), generator=generator)
        for index, subpolicy in enumerate(self.subpolicies):
            picked = (choice == index).nonzero().flatten()
            if len(picked):
                picked = picked.to(x.device, non_blocking=True)
                x.index_copy_(0, picked, subpolicy(x[picked]).clamp_(0, 1))
        return x


class EventAugment(nn.Module):
    """Horizontal flip and a random roll of up to ``max_shift`` pixels along both axes."""

    def __init__(self, max_shift: int = 5):
        super().__init__()
        self.max_shift = max_shift

    def forward(self, frames: Tensor, generator: torch.Generator) -> Tensor:  # [B, T, C, H, W]
        x = frames.float()
        B, H, W = x.shape[0], x.shape[-2], x.shape[-1]
        flip = (torch.rand(B, generator=generator) < 0.5).to(x.device, non_blocking=True)
        x = torch.where(flip.view(B, 1, 1, 1, 1), x.flip(-1), x)
        shifts = torch.randint(-self.max_shift, self.max_shift + 1, (2, B), generator=generator)
        shifts = shifts.to(x.device, non_blocking=True)
        rows = (torch.arange(H, device=x.device).view(1, H) - shifts[0].view(B, 1)) % H
        cols = (torch.arange(W, device=x.device).view(1, W) - shifts[1].view(B, 1)) % W
        x = x.gather(-2, rows.view(B, 1, 1, H, 1).expand_as(x))
        return x.gather(-1, cols.view(B, 1, 1, 1, W).expand_as(x))


def build(kind: str, input_size: int) -> nn.Module | None:
    """The training augmentation named by a dataset: none, crop+flip, cifar (with AutoAugment), dvs."""
    if kind == "none":
        return None
    if kind == "cifar":
        return ImageAugment(input_size, padding=4, autoaugment=True)
    if kind == "crop-flip":
        return ImageAugment(input_size, padding=max(1, input_size // 8), autoaugment=False)
    if kind == "dvs":
        return EventAugment(5)
    raise ValueError(f"unknown augmentation {kind!r}")
