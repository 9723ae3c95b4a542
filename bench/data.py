"""Images per second of the data pipeline alone: batching, augmentation on the device, normalizing.

    python -m bench.data                                  # digits (embedded)
    python -m bench.data --dataset cifar10 --data-path DIR --batch-size 100 --json out.json
    python -m bench.data --synthetic 50000          # CIFAR-10-shaped random images, full augmentation
    python -m bench.data --synthetic 50000 --step-ms 10   # next to a 10 ms stand-in step (CUDA)
    python -m bench.data --synthetic 50000 --augment-chunks 4096 16384   # images per augmentation call
    python -m bench.data --synthetic 50000 --step-ms 10 --compare-interleave # each chunk augmented at once vs interleaved

On CUDA the split lives on the GPU; on the CPU batches come through a DataLoader. ``--step-ms``
adds a row with a stand-in training step after every training batch: one GPU kernel that spins
for that long while the host goes on, as a CUDA-graph step does. If preparing batches never waits
for the GPU, the host augments the next batches while it spins: ``overlap`` is the share of the
shorter of the two (augmentation alone, the steps alone) that was hidden under the other, 1 when
fully hidden, 0 when they ran one after the other.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from bench.common import environment, print_table, synchronize, write_json
from mpdagl_triton import data


def overlap(alone_s: float, steps_s: float, together_s: float) -> float:
    """Share of the shorter of two pieces of work hidden under the longer: 1 when together they
    took as long as the longer alone, 0 when as long as both one after the other."""
    return (alone_s + steps_s - together_s) / min(alone_s, steps_s)


def stand_in_step(ms: float, device: torch.device):
    """A function that keeps the GPU busy for ``ms`` milliseconds in one kernel and returns at
    once on the host (``torch.cuda._sleep``, calibrated here in clock cycles per millisecond)."""
    if device.type != "cuda":
        raise SystemExit("--step-ms needs a CUDA device: the stand-in step is a GPU kernel")
    cycles = 10_000_000
    torch.cuda._sleep(cycles)  # first launch outside the timing
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(cycles)
    end.record()
    end.synchronize()
    per_ms = cycles / start.elapsed_time(end)
    return lambda: torch.cuda._sleep(int(ms * per_ms))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-path")
    parser.add_argument("--timesteps", type=int, default=10, help="frames (cifar10-dvs)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=2, help="the first is warm-up")
    parser.add_argument("--synthetic", type=int, metavar="N",
                        help="N random 3x32x32 uint8 images with the CIFAR augmentation (no download)")
    parser.add_argument("--augment-chunks", type=int, nargs="+", metavar="N",
                        help="images augmented per call, one training row each (default: the loader's)")
    parser.add_argument("--compare-interleave", action="store_true",
                        help="also with each chunk augmented all at once, not interleaved with the batches before it")
    parser.add_argument("--step-ms", type=float,
                        help="also time training batches with a stand-in GPU step of this many ms after each (CUDA)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    step = stand_in_step(args.step_ms, device) if args.step_ms else None

    t0 = time.perf_counter()
    if args.synthetic:
        images = torch.randint(0, 256, (args.synthetic, 3, 32, 32), dtype=torch.uint8)
        labels = torch.randint(0, 10, (args.synthetic,))
        split = data.Split(images, labels)
        dataset = data.Dataset("synthetic-cifar", split, data.Split(images[:10000], labels[:10000]),
                               [str(i) for i in range(10)], data.CIFAR_MEAN, data.CIFAR_STD, "cifar")
        args.dataset = dataset.name
    else:
        dataset = data.load(args.dataset, path=args.data_path, timesteps=args.timesteps)
    load_s = time.perf_counter() - t0

    def epoch_seconds(loader: data.Loader, epoch: int, after_batch=None) -> tuple[float, int, int]:
        """Seconds, images and batches of one epoch, the device's work included."""
        synchronize(device)
        start, seen, batches = time.perf_counter(), 0, 0
        for images, _ in loader.epoch(0, epoch):
            seen, batches = seen + len(images), batches + 1
            if after_batch is not None:
                after_batch()
        synchronize(device)
        return time.perf_counter() - start, seen, batches

    sample_elements = math.prod(dataset.train.images.shape[1:])
    rows = []
    chunks = args.augment_chunks or [data.AUGMENT_CHUNK_ELEMENTS // sample_elements]
    variants = [(chunk, interleave) for chunk in chunks
                for interleave in ([True, False] if args.compare_interleave else [True])]
    for chunk, interleave in variants:
        loader = data.Loader(dataset.train, dataset, args.batch_size, device, train=True, workers=args.workers,
                             augment_chunk_elements=chunk * sample_elements, interleave=interleave)
        for epoch in range(args.epochs):
            seconds, seen, batches = epoch_seconds(loader, epoch)
        train = {"split": "train (augmented)", "augmentation": dataset.augmentation, "chunk": chunk,
                 "interleaved": "yes" if interleave else "no"}
        rows.append({**train, "images": seen, "images_per_s": seen / seconds, "device": device.type})
        if step is not None:  # the next epoch (its first chunk started in the last), a stand-in step after each batch
            together, seen, batches = epoch_seconds(loader, args.epochs, step)
            steps_alone = batches * args.step_ms / 1e3
            rows.append({**train, "split": f"train + {args.step_ms:g} ms step", "images": seen,
                         "images_per_s": seen / together, "device": device.type,
                         "overlap": overlap(seconds, steps_alone, together)})
    loader = data.Loader(dataset.test, dataset, args.batch_size, device, train=False, workers=args.workers)
    for epoch in range(args.epochs):
        seconds, seen, _ = epoch_seconds(loader, epoch)
    rows.append({"split": "test", "augmentation": "none", "images": seen, "images_per_s": seen / seconds,
                 "device": device.type})
    print(f"{args.dataset}: loaded in {load_s:.1f} s")
    print_table(rows, ["split", "augmentation", "chunk", "interleaved", "images", "images_per_s", "device",
                       "overlap"])
    payload = {"benchmark": "data", "dataset": args.dataset, "load_seconds": load_s,
               "environment": environment(device), "rows": rows}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
