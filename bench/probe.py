"""What the per-epoch probe of the paper's quantities costs, against the training steps of an epoch.

    python -m bench.probe                                 # digits: tiny model, 1437 images
    python -m bench.probe --arch resnet19 --images 50000 --batch-size 128 -T 2 --size 32 --channels 3

The probe runs once per epoch (one forward pass over --probe-size images plus the reference
recurrence per layer); the overhead is its time over (steps per epoch x time per step).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from bench.common import environment, time_ms, write_json
from mpdagl_triton import analysis, models


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="tiny")
    parser.add_argument("--images", type=int, default=1437, help="training images per epoch")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--probe-size", type=int, default=128)
    parser.add_argument("-T", "--timesteps", type=int, default=2)
    parser.add_argument("--size", type=int, default=8)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    net = models.create(args.arch, 10, args.timesteps, in_channels=args.channels, input_size=args.size).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    images = torch.rand(args.batch_size, args.channels, args.size, args.size, device=device)
    labels = torch.randint(0, 10, (args.batch_size,), device=device)
    probe_images = torch.rand(args.probe_size, args.channels, args.size, args.size, device=device)

    def step():
        loss = F.cross_entropy(net(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step_ms = time_ms(step, device, warmup=3, repeats=20)
    probe_ms = time_ms(lambda: analysis.probe(net, probe_images), device, warmup=1, repeats=5)
    steps = args.images // args.batch_size
    overhead = probe_ms / (steps * step_ms)
    print(f"{args.arch}: step {step_ms:.2f} ms x {steps} steps per epoch; probe of {args.probe_size} "
          f"images {probe_ms:.1f} ms once per epoch = {100 * overhead:.2f}% of an epoch "
          f"({probe_ms / steps:.3f} ms per step)")
    payload = {"benchmark": "probe", "environment": environment(device), "step_ms": step_ms,
               "probe_ms": probe_ms, "steps_per_epoch": steps, "overhead": overhead, "args": vars(args)}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
