"""Training augmentation on the training device, per sample, on whole batches.

Images arrive as uint8 ``[B, C, H, W]`` and leave as float in [0, 1]; event frames arrive as float
``[B, T, C, H, W]`` counts. Our own random choices (crops, flips, rolls, AutoAugment's sub-policy
per image) are drawn on the CPU from the epoch's generator and shipped to the device; kornia's
AutoAugment operations draw on the CPU too (keep these modules there), from torch's global
generator, which the loader sets to a stream of its own per (seed, epoch, rank) while they run
(``data._KorniaDraws``). Nothing here reads a device value back, so on a GPU the host prepares
the next batches while queued steps run. Either way an epoch's augmentation does not depend on
whether the run was resumed.
"""

from __future__ import annotations

from typing import Generator, TypeVar

import torch
from kornia.augmentation.auto import AutoAugment
from torch import Tensor, nn

Result = TypeVar("Result")


def finish(work: Generator[None, None, Result]) -> Result:
    """Run a piece-by-piece computation (an augmentation's ``steps``) to its end; its result."""
    while True:
        try:
            next(work)
        except StopIteration as done:
            return done.value


def random_crop_flip(images: Tensor, size: int, padding: int, generator: torch.Generator) -> Tensor:
    """A ``size`` x ``size`` window of each image zero-padded by ``padding`` on every side, at a
    uniformly random offset, mirrored left-right with probability 1/2.

    Args:
        images: ``[N, C, H, W]``, any dtype (uint8 images stay uint8), on any device.
        size: side of the output; ``H + 2 * padding`` and ``W + 2 * padding`` must reach it.
        generator: CPU generator of the draws (three per image: row, column, flip).

    Returns:
        ``[N, C, size, size]``, ``images``' dtype and device.

    Two gathers whatever ``N`` (kornia's crop slices every image in Python and reads its offsets
    back to the host: on a GPU, ~3 dispatches per image and a sync per call).

    Example:
        >>> x = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
        >>> random_crop_flip(x, 4, 1, torch.Generator().manual_seed(0)).shape
        torch.Size([1, 1, 4, 4])
    """
    N, C, H, W = images.shape
    if min(H, W) + 2 * padding < size:
        raise ValueError(f"cannot crop {size}x{size} from {H}x{W} images padded by {padding}")
    top = torch.randint(H + 2 * padding - size + 1, (N, 1), generator=generator) - padding
    left = torch.randint(W + 2 * padding - size + 1, (N, 1), generator=generator) - padding
    flip = torch.rand(N, 1, generator=generator) < 0.5
    steps = torch.arange(size)
    rows, cols = top + steps, left + torch.where(flip, size - 1 - steps, steps)
    rows, cols = torch.stack([rows, cols]).to(images.device, non_blocking=True)  # one copy
    x = images.gather(2, rows.clamp(0, H - 1).view(N, 1, size, 1).expand(N, C, size, W))
    x = x.gather(3, cols.clamp(0, W - 1).view(N, 1, 1, size).expand(N, C, size, size))
    inside = (((rows >= 0) & (rows < H)).view(N, 1, size, 1)
              & ((cols >= 0) & (cols < W)).view(N, 1, 1, size))
    return x * inside  # the zero padding


class ImageAugment(nn.Module):
    """Random crop with zero padding, horizontal flip, and optionally AutoAugment (CIFAR10 policy).

    Everything draws per image: crop, flip, and AutoAugment's sub-policy (each of the 25 is then
    applied once, to all the images that drew it). The cost is per call, not per image, on a GPU
    (a kornia call is a few milliseconds of host time and a few dozen small launches): 25 kornia
    calls however many images, so the loader augments several batches at once (``Loader``).

    ``steps`` does the same work in ``pieces`` pieces (the crop and flip, then one per sub-policy),
    so that the loader can interleave the next chunk's augmentation with the training steps of
    the current one instead of issuing a whole call's ~4,000 dispatches at once.
    """

    def __init__(self, size: int, padding: int, autoaugment: bool):
        super().__init__()
        self.size, self.padding = size, padding
        self.subpolicies = None
        if autoaugment:
            self.subpolicies = nn.ModuleList(m for _, m in AutoAugment("cifar10").named_children())
        self.pieces = 1 + (len(self.subpolicies) if autoaugment else 0)

    def forward(self, images: Tensor, generator: torch.Generator) -> Tensor:
        return finish(self.steps(images, generator))

    def steps(self, images: Tensor, generator: torch.Generator) -> Generator[None, None, Tensor]:
        """``forward`` as a generator that yields between its ``pieces`` and returns the images."""
        choice = None  # drawn first: the sub-policy of each image, then the crops and flips
        if self.subpolicies is not None:  # the images of each sub-policy, known without a sync
            choice = torch.randint(len(self.subpolicies), (len(images),), generator=generator)
        x = random_crop_flip(images, self.size, self.padding, generator).float() / 255
        if choice is None:
            return x
        for index, subpolicy in enumerate(self.subpolicies):
            yield
            picked = (choice == index).nonzero().flatten()
            if len(picked):
                picked = picked.to(x.device, non_blocking=True)
                x.index_copy_(0, picked, subpolicy(x[picked]).clamp_(0, 1))
        return x


class EventAugment(nn.Module):
    """Horizontal flip and a random roll of up to ``max_shift`` pixels along both axes."""

    pieces = 1  # see ImageAugment.steps

    def __init__(self, max_shift: int = 5):
        super().__init__()
        self.max_shift = max_shift

    def steps(self, frames: Tensor, generator: torch.Generator) -> Generator[None, None, Tensor]:
        """``forward`` in one piece (see ``ImageAugment.steps``)."""
        return self(frames, generator)
        yield  # unreachable: makes this a generator, of a single piece

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
