"""Long runs on preemptible clusters: mid-epoch resume points, stop signals, `--resume auto`."""

import pytest
import torch

from mpdagl_triton import data


def _cifar_like(n: int) -> tuple[data.Split, data.Dataset]:
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    split = data.Split(images, torch.arange(n) % 10)
    ds = data.Dataset("fake", split, split, [str(i) for i in range(10)], data.CIFAR_MEAN, data.CIFAR_STD, "cifar")
    return split, ds


@pytest.mark.parametrize("world", [1, 2])
def test_a_loader_resumed_mid_epoch_hands_out_the_same_remaining_batches(world):
    """An epoch stopped after any batch and continued from the loader's position in a new loader
    gives the batches (and AutoAugment's draws) the uninterrupted epoch gives from there, without
    preparing the chunks before; so does the next epoch."""
    split, ds = _cifar_like(48)

    def loaders():  # three chunks of two batches (of 8 images, or 4 per process)
        return [data.Loader(split, ds, 8, torch.device("cpu"), train=True, rank=r, world=world,
                            augment_chunk_elements=2 * (8 // world) * 3 * 8 * 8) for r in range(world)]

    full = [list(loader.epoch(7, 1)) + list(loader.epoch(7, 2)) for loader in loaders()]
    for stop in (1, 2, 5, 6):
        for rank, loader in enumerate(loaders()):
            batches = loader.epoch(7, 1)
            for _ in range(stop):
                next(batches)
            position = loader.position
            assert (position.batch, position.chunk_start) == (stop, stop // 2 * 2)
            assert (position.generator is None) == (stop == 6)  # no chunk follows the last
            again = loaders()[rank]
            rest = list(again.epoch(7, 1, start=position)) + list(again.epoch(7, 2))
            expected = full[rank][stop:]
            assert len(rest) == len(expected)
            for (x, y), (x0, y0) in zip(rest, expected):
                assert torch.equal(x, x0) and torch.equal(y, y0)
