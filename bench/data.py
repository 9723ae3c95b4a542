"""Images per second of the data pipeline alone: batching, augmentation on the device, normalizing.

    python -m bench.data                                  # digits (embedded)
    python -m bench.data --dataset cifar10 --data-path DIR --batch-size 100 --json out.json
    python -m bench.data --synthetic 50000          # CIFAR-10-shaped random images, full augmentation

On CUDA the split lives on the GPU; on the CPU batches come through a DataLoader.
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.common import environment, print_table, synchronize, write_json
from mpdagl_triton import data


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
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)

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
    rows = []
    for train in (True, False):
        split = dataset.train if train else dataset.test
        loader = data.Loader(split, dataset, args.batch_size, device, train=train, workers=args.workers)
        for epoch in range(args.epochs):
            synchronize(device)
            start, seen = time.perf_counter(), 0
            for images, _ in loader.epoch(0, epoch):
                seen += len(images)
            synchronize(device)
            seconds = time.perf_counter() - start
        rows.append({"split": "train (augmented)" if train else "test", "augmentation":
                     dataset.augmentation if train else "none", "images": seen,
                     "images_per_s": seen / seconds, "device": device.type})
    print(f"{args.dataset}: loaded in {load_s:.1f} s")
    print_table(rows, ["split", "augmentation", "images", "images_per_s", "device"])
    payload = {"benchmark": "data", "dataset": args.dataset, "load_seconds": load_s,
               "environment": environment(device), "rows": rows}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
