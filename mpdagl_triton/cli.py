"""``mpdagl``: the command line.

    mpdagl train [options]          train (no options: the embedded digits default)
    mpdagl eval --checkpoint DIR    re-evaluate a saved model on its dataset's test split
    mpdagl push DIR --repo-id NAME  upload a training folder with a model card to the Hub
    mpdagl analyze DIR [--compare DIR2 ...]   figures of the paper's quantities
    mpdagl energy DIR               the paper's energy estimate (Table 2)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mpdagl_triton.surrogates import SURROGATES, WIDTH_RULES


def _train_parser(sub) -> None:
    from mpdagl_triton.train import RECIPES

    p = sub.add_parser(
        "train", help="train a spiking network",
        description="Train a spiking network with MPD-AGL. With no options: the embedded digits "
                    "set, the tiny model, a few epochs on the CPU. Options left out come from "
                    "--recipe (default: digits).",
    )
    # every default is None so that we know what the user set (a resume may change only some)
    p.add_argument("--recipe", choices=sorted(RECIPES), help="preset of SPEC.md section 7 (default: digits)")
    p.add_argument("--dataset", help="digits (default), cifar10, cifar100, tiny-imagenet, cifar10-dvs, a Hub id "
                                     "or a local folder; a dataset with a recipe brings its recipe")
    p.add_argument("--arch", help="architecture: resnet19, resnet18, vggsnn, vgg13, tiny")
    p.add_argument("-T", "--timesteps", type=int, help="simulation timesteps T (>= 1)")
    p.add_argument("--epochs", type=int, help="epochs; the cosine schedule spans them")
    p.add_argument("--batch-size", type=int, help="images per step")
    p.add_argument("--lr", type=float, help="peak learning rate (cosine decay to 0, per epoch)")
    p.add_argument("--optimizer", choices=["sgd", "adam"], help="SGD (momentum 0.9) or Adam")
    p.add_argument("--weight-decay", type=float, help="L2 weight decay on all parameters")
    p.add_argument("--loss", choices=["ce", "tet"], help="cross entropy on the mean over T, or TET")
    p.add_argument("--neuron", choices=["plif", "lif"], help="learnable decay (plif) or fixed (lif)")
    p.add_argument("--width-rule", choices=list(WIDTH_RULES), help="surrogate width rule (default mpdagl)")
    p.add_argument("--surrogate", choices=list(SURROGATES), help="surrogate shape (default rect)")
    p.add_argument("--compile", action="store_const", const=True, help="torch.compile the model")
    p.add_argument("--compile-mode", choices=["default", "reduce-overhead", "max-autotune"],
                   help="torch.compile mode (implies --compile); reduce-overhead replays the step as CUDA graphs")
    p.add_argument("--amp", choices=["bf16", "fp16", "off"], help="mixed precision (fp16 needs CUDA)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help="channels_last memory format (default: on CUDA)")
    p.add_argument("--device", help="cuda, cuda:1, cpu or auto (default: cuda when available)")
    p.add_argument("--seed", type=int, help="seed of initialisation, shuffling and augmentation")
    p.add_argument("--out", help="output folder (default runs/<dataset>, or runs/<dataset>-N when that holds a run)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out after its last completed epoch")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in --out (default runs/<dataset>); without it a fresh run "
                        "never replaces one")
    p.add_argument("--workers", type=int, help="data-loading worker processes (CPU loading)")
    p.add_argument("--data-path", help="read the dataset from this local folder (Hub layout; for "
                                       "cifar10-dvs the folder of per-class .aedat folders)")
    p.add_argument("--sync-bn", action="store_const", const=True,
                   help="under torchrun: tdBN batch statistics over all processes (fused all-reduce)")
    p.add_argument("--check-finite", action="store_const", const=True,
                   help="stop with a clear error when an input batch or a layer input holds NaN/Inf")
    p.add_argument("--probe-size", type=int, help="test images probed once per epoch for the per-layer "
                                                   "statistics (default 128)")
    p.add_argument("--image-column", help="image column of a Hub / local dataset")
    p.add_argument("--label-column", help="label column of a Hub / local dataset")


def _train(args: argparse.Namespace) -> int:
    from mpdagl_triton.train import RECIPES, STATE_JSON, TrainConfig, free_output_dir, train, writes_outputs

    given = {k: v for k, v in vars(args).items()
             if v is not None and k not in ("command", "recipe", "resume", "overwrite", "func")}
    if "compile_mode" in given:  # a compile mode asks for compiling
        given.setdefault("compile", True)
    # a dataset with a recipe brings it along (--dataset cifar10 trains the paper's ResNet-19)
    recipe = RECIPES.get(args.recipe or given.get("dataset", "digits"), {})
    fields = {**recipe, **given}
    reports = writes_outputs()  # under torchrun only rank 0 reports
    if "out" not in fields:
        default = Path("runs") / Path(fields["dataset"]).name
        fields["out"] = str(default if args.resume or args.overwrite else free_output_dir(default))
        if reports and fields["out"] != str(default):
            print(f"{default} holds an earlier run; this one trains into {fields['out']} "
                  f"(--out DIR to choose, --overwrite to replace {default})")
    cfg = TrainConfig(**fields)
    try:
        result = train(cfg, resume=args.resume, overwrite=args.overwrite, explicit=set(given))
    except KeyboardInterrupt:  # Ctrl-C: where things stand, not a traceback
        state = Path(cfg.out) / STATE_JSON
        if reports and state.is_file():
            epoch = json.loads(state.read_text())["epoch"]
            print(f"mpdagl train: interrupted; {cfg.out} holds epoch {epoch}: continue with "
                  f"`mpdagl train --out {cfg.out} --resume`", file=sys.stderr)
        elif reports:
            print(f"mpdagl train: interrupted before an epoch ended; no checkpoint in {cfg.out}", file=sys.stderr)
        return 130
    if not reports:
        return 0
    print(f"final test accuracy {result['test_acc']:.4f} (best {result['best_acc']:.4f}); "
          f"checkpoint in {result['out']}")
    return 0


def _eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="re-evaluate a saved model on its test split",
                       description="Load DIR/config.json + DIR/model.safetensors and evaluate.")
    p.add_argument("--checkpoint", required=True, help="a training output folder, or a Hub model repo (user/name)")
    p.add_argument("--dataset", help="evaluate on this dataset instead of the one in config.json")
    p.add_argument("--data-path", help="local copy of the dataset (default: the training run's --data-path)")
    p.add_argument("--image-column", help="image column (default: the training run's, or guessed)")
    p.add_argument("--label-column", help="label column (default: the training run's, or guessed)")
    p.add_argument("--batch-size", type=int, default=256, help="test images per batch (default 256)")
    p.add_argument("--device", default="auto", help="cuda, cuda:1, cpu or auto (default: cuda when available)")


def _eval(args: argparse.Namespace) -> int:
    from mpdagl_triton import data
    from mpdagl_triton.hub import load, local_folder
    from mpdagl_triton.train import STATE_JSON, TrainConfig, evaluate, resolve_device

    device = resolve_device(args.device)
    model = load(args.checkpoint, device=device)
    name = args.dataset or model.dataset
    if name is None:
        raise ValueError(f"{args.checkpoint}/config.json names no dataset; pass --dataset")
    source = {"data_path": args.data_path, "image_column": args.image_column, "label_column": args.label_column}
    folder = local_folder(args.checkpoint)
    if name == model.dataset and folder is not None and (folder / STATE_JSON).is_file():
        # the run's own dataset: read it where the run did
        trained = json.loads((folder / STATE_JSON).read_text())["config"]
        source = {key: value if value is not None else trained.get(key) for key, value in source.items()}
    dataset = data.load(name, path=source["data_path"], timesteps=model.timesteps,
                        image_column=source["image_column"], label_column=source["label_column"])
    if (dataset.num_classes, dataset.in_channels) != (model.num_classes, model.in_channels):
        raise ValueError(f"{name} has {dataset.num_classes} classes of {dataset.in_channels}-channel images; "
                         f"{args.checkpoint} classifies {model.num_classes} classes of "
                         f"{model.in_channels}-channel images")
    loader = data.Loader(dataset.test, dataset, args.batch_size, device, train=False)
    result = evaluate(TrainConfig(), model, loader, device)
    print(f"{args.checkpoint}: {name} test accuracy {result['test_acc']:.4f}, loss {result['test_loss']:.4f}")
    return 0


def _push_parser(sub) -> None:
    p = sub.add_parser("push", help="upload a training folder to the Hugging Face Hub",
                       description="Upload DIR's model.safetensors, config.json, metrics.jsonl, plots "
                                   "and a generated model card (README.md). Token: HF_TOKEN or the "
                                   "stored `huggingface-cli login`.")
    p.add_argument("folder", metavar="DIR", help="a training output folder")
    p.add_argument("--repo-id", required=True, help="user/name of the model repo (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--revision", help="branch to push to (created if missing)")
    p.add_argument("--commit-message", help="commit message")
    p.add_argument("--create-pr", action="store_true",
                   help="open a pull request with the upload instead of committing to the branch")


def _push(args: argparse.Namespace) -> int:
    from mpdagl_triton.hub import push

    url = push(args.folder, args.repo_id, private=args.private, revision=args.revision,
               commit_message=args.commit_message, create_pr=args.create_pr)
    done = "opened a pull request with" if args.create_pr else "pushed"
    print(f"{done} {args.folder} to {args.repo_id}: {url}")
    return 0


def _analyze_parser(sub) -> None:
    p = sub.add_parser("analyze", help="figures of the paper's quantities for a training folder",
                       description="Write PNG figures (tdBN scale/shift, firing rate, gradient-available "
                                   "proportion, surrogate width, Theorems 1-2) and summary.json into "
                                   "DIR/analysis (or --out).")
    p.add_argument("folder", metavar="DIR", help="a training output folder")
    p.add_argument("--compare", nargs="+", default=[], metavar="DIR2",
                   help="overlay these runs on loss, accuracy and gradient-available proportion")
    p.add_argument("--out", help="where to write (default DIR/analysis)")


def _analyze(args: argparse.Namespace) -> int:
    from mpdagl_triton.analysis import analyze

    summary = analyze(args.folder, args.compare, args.out)
    out = Path(args.out) if args.out else Path(args.folder) / "analysis"
    for name in summary["files"].values():
        print(out / name)
    print(out / "summary.json")
    return 0


def _energy_parser(sub) -> None:
    p = sub.add_parser("energy", help="the paper's energy estimate (Table 2) for a training folder",
                       description="#Add = sum over spiking layers of input rate x T x MACs; #Mult = T x "
                                   "(encoding + readout MACs); E = 0.9 pJ #Add + 4.6 pJ #Mult, against "
                                   "the iso-ANN's 4.6 pJ per MAC. Rates come from the last epoch's probe.")
    p.add_argument("folder", metavar="DIR", help="a training output folder")


def _energy(args: argparse.Namespace) -> int:
    from mpdagl_triton.analysis import energy, read_run

    rows, config = read_run(args.folder)
    if not rows[-1].get("synapses"):
        raise ValueError(f"{args.folder}/metrics.jsonl has no per-layer synapse statistics")
    e = energy(rows[-1]["synapses"], config["timesteps"])
    print(f"{args.folder} (epoch {rows[-1]['epoch']}, T = {config['timesteps']}):")
    print(f"  SNN     #Add {e['adds'] / 1e6:10.2f} M   #Mult {e['mults'] / 1e6:8.2f} M   energy {e['snn_mj']:.4f} mJ")
    print(f"  iso-ANN  MACs {e['ann_macs'] / 1e6:9.2f} M                     energy {e['ann_mj']:.4f} mJ")
    print(f"  SNN / ANN energy {e['ratio']:.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mpdagl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    _train_parser(sub)
    _eval_parser(sub)
    _push_parser(sub)
    _analyze_parser(sub)
    _energy_parser(sub)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        commands = {"train": _train, "eval": _eval, "push": _push, "analyze": _analyze, "energy": _energy}
        return commands[args.command](args)
    except (ValueError, TypeError) as exc:  # bad input: one clear line, no traceback
        print(f"mpdagl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as exc:  # data unavailable, diverged, disk problems
        print(f"mpdagl {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
