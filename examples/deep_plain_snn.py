"""A deep plain spiking CNN (no residual connections) on the embedded digits, trained once per
surrogate width rule, then compared: the experiment behind the paper's gradient-vanishing argument,
on a network of your own.

    python examples/deep_plain_snn.py                   # depth 8, 6 epochs per rule, runs/plain-*
    python examples/deep_plain_snn.py --depth 16 --epochs 10 --out runs/deeper

The same architecture from the command line, once this module is importable (run from the
repository root, or put it on the Python path):

    mpdagl train --arch deep-plain --import examples.deep_plain_snn --width-rule lsg
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from torch import Tensor, nn

from mpdagl_triton import cli, models
from mpdagl_triton.models import ConvSpike, Pool, Stem
from mpdagl_triton.train import TrainConfig, train

DEPTH, WIDTH = 8, 32  # the default network


class DeepPlainSNN(nn.Module):
    """Stem -> ``depth`` conv/tdBN/PLIF layers of one width -> 2x2 pool -> linear readout.

    ``[B, C, H, W]`` images -> ``[T, B, classes]``, the readout at every timestep, as every body
    registered with :func:`mpdagl_triton.models.register` must return.
    """

    fixed_input_size = True  # the readout flattens the last feature map

    def __init__(self, num_classes: int, timesteps: int, in_channels: int = 1, input_size: int = 8,
                 depth: int = DEPTH, width: int = WIDTH, **neuron_options):
        super().__init__()
        self.stem = Stem(in_channels, width, timesteps, **neuron_options)
        self.convs = nn.Sequential(*[ConvSpike(width, width, **neuron_options) for _ in range(depth)])
        self.pool = Pool(2)
        side = input_size // 2
        self.readout = nn.Linear(width * side * side, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        spikes = self.pool(self.convs(self.stem(x)))  # [T, B, width, H/2, W/2]
        return self.readout(spikes.flatten(2))        # [T, B, classes]


#: every size gets a name of its own, so that a run's config.json (which names the architecture)
#: rebuilds the same network: deep-plain is depth 8, deep-plain-4 depth 4, ...
DEPTHS = (2, 4, 8, 12, 16)
models.register("deep-plain", DeepPlainSNN)
for depth in DEPTHS:
    models.register(f"deep-plain-{depth}", functools.partial(DeepPlainSNN, depth=depth))


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=DEPTH, choices=DEPTHS,
                        help="conv layers after the stem (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per run (default %(default)s)")
    parser.add_argument("--timesteps", type=int, default=4, help="T (default %(default)s)")
    parser.add_argument("--rules", nargs="+", default=["mpdagl", "lsg", "fixed"],
                        help="surrogate width rules, one run each (default: all three)")
    parser.add_argument("--out", default="runs/plain", help="the runs go to OUT-<rule> (default %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace runs already in those folders")
    args = parser.parse_args(argv)
    arch = "deep-plain" if args.depth == DEPTH else f"deep-plain-{args.depth}"
    runs = []
    for rule in args.rules:
        out = Path(f"{args.out}-{rule}")
        result = train(TrainConfig(arch=arch, width_rule=rule, timesteps=args.timesteps,
                                   epochs=args.epochs, out=str(out)), overwrite=args.overwrite)
        print(f"width rule {rule}: test accuracy {result['test_acc']:.4f} ({out})")
        runs.append(out)
    # the paper's figures for the first run, the others overlaid: compare.png, grad_norms.png
    cli.main(["analyze", str(runs[0]), "--compare", *map(str, runs[1:])])
    return runs


if __name__ == "__main__":
    main()
