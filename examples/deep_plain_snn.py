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

DEPTH, WIDTH = 8, 32


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


models.register("deep-plain", DeepPlainSNN)


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=DEPTH, help="conv layers after the stem")
    parser.add_argument("--width", type=int, default=WIDTH, help="channels of every layer")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--timesteps", type=int, default=4)
    parser.add_argument("--rules", nargs="+", default=["mpdagl", "lsg", "fixed"])
    parser.add_argument("--out", default="runs/plain", help="runs go to OUT-<rule>")
    args = parser.parse_args(argv)
    if (args.depth, args.width) != (DEPTH, WIDTH):  # the same name, another size, for these runs
        models.register("deep-plain", functools.partial(DeepPlainSNN, depth=args.depth, width=args.width),
                        replace=True)
    runs = []
    for rule in args.rules:
        out = Path(f"{args.out}-{rule}")
        result = train(TrainConfig(arch="deep-plain", width_rule=rule, timesteps=args.timesteps,
                                   epochs=args.epochs, out=str(out)), overwrite=True)
        print(f"{rule}: test accuracy {result['test_acc']:.4f}")
        runs.append(out)
    # the paper's figures for the first run, the others overlaid: compare.png, grad_norms.png
    cli.main(["analyze", str(runs[0]), "--compare", *map(str, runs[1:])])
    return runs


if __name__ == "__main__":
    main()
