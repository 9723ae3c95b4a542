"""The ``mpdagl`` command line. ``mpdagl train``'s options are generated from ``TrainConfig``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path

DESCRIPTION = """\
Spiking neural networks trained with MPD-AGL, on fused Triton kernels.

  mpdagl train [options]          train (no options: the embedded digits set, a few seconds on a CPU)
  mpdagl eval --checkpoint DIR    evaluate a saved model on its dataset's test split
  mpdagl analyze DIR [--compare DIR2 ...]   figures of the paper's quantities
  mpdagl energy DIR               the paper's energy estimate
  mpdagl push DIR --repo-id NAME  upload a training folder with a model card to the Hub
  mpdagl export DIR --format nir|pt2 --out FILE   a NIR graph or an AOTInductor package
"""

#: the options of ``mpdagl train`` that are not TrainConfig fields
RUN_OPTIONS = ("recipe", "resume", "overwrite")
#: the fields every recipe sets (train.RECIPES), whose default depends on the recipe
RECIPE_FIELDS = ("dataset", "arch", "timesteps", "epochs", "batch_size", "lr", "optimizer", "weight_decay")


def _version() -> str:
    from mpdagl_triton._version import __version__

    return __version__


def _add_config_options(parser: argparse.ArgumentParser, config_class) -> None:
    """One option per field of ``config_class`` (a dataclass made with ``train.option``): its
    name with dashes, type, choices and help from the field. Every default is None here, so that
    what the user set is known (a resume may change only some fields); the field's own default
    applies otherwise and is shown in the help."""
    hints = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        meta = field.metadata
        kind = hints[field.name]
        optional = type(None) in typing.get_args(kind)  # X | None: X
        base = next(t for t in typing.get_args(kind) if t is not type(None)) if optional else kind
        flag = meta.get("flag") or f"--{field.name.replace('_', '-')}"
        names = [flag] + ([meta["short"]] if meta.get("short") else [])
        if field.name in RECIPE_FIELDS:  # the recipe decides; digits' is the default recipe
            shown = f" (digits recipe: {field.default})"
        elif field.default in (None, ()) or field.name == "out":
            shown = ""
        else:
            shown = f" (default: {field.default})"
        extra = {"help": meta["help"] + shown, "default": None, "dest": field.name}
        if base is bool:
            extra["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(base) is tuple:  # several values: --import a b
            extra.update(nargs="+", type=typing.get_args(base)[0], metavar="NAME")
        else:
            extra["type"] = base
            if meta.get("choices"):
                extra["choices"] = list(meta["choices"])
            else:
                extra["metavar"] = field.name.upper()
        parser.add_argument(*names, **extra)


def _train_parser(sub) -> None:
    from mpdagl_triton.train import RECIPES, TrainConfig

    p = sub.add_parser(
        "train", help="train a spiking network",
        description="Train a spiking network with MPD-AGL. With no options: the embedded digits "
                    "set and the tiny model on the CPU. Options left out come from --recipe "
                    "(default: the dataset's recipe, else digits).",
    )
    p.add_argument("--recipe", choices=sorted(RECIPES), help="the authors' settings for a dataset")
    p.add_argument("--resume", nargs="?", const=True, choices=["auto"],
                   help="continue the run in --out from its resume point; with 'auto': continue "
                        "when --out holds one, else start afresh (the default in a process torchrun "
                        "restarts)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in --out; without it a fresh run never replaces one")
    _add_config_options(p, TrainConfig)


def _train(args: argparse.Namespace) -> int:
    from mpdagl_triton.runtime import resolve_device
    from mpdagl_triton.train import (RECIPES, STATE_JSON, Stopped, TrainConfig, free_output_dir, import_modules,
                                     restartable, train, validate, writes_outputs)

    given = {k: v for k, v in vars(args).items()
             if v is not None and k not in (*RUN_OPTIONS, "command")}
    if "compile_mode" in given:  # a compile mode asks for compiling
        given.setdefault("compile", True)
    # a dataset with a recipe brings it along (--dataset cifar10 trains the paper's ResNet-19)
    recipe = RECIPES.get(args.recipe or given.get("dataset", "digits"), {})
    fields = {**recipe, **given}
    reports = writes_outputs()  # under torchrun only rank 0 reports
    if not args.resume:  # bad options fail before anything is said about the output folder
        import_modules(fields.get("imports", ()))
        validate(TrainConfig(**fields))
        resolve_device(fields.get("device", "auto"))
    if "out" not in fields:
        default = Path("runs") / Path(fields["dataset"]).name
        # a process torchrun may restart keeps the plain default: its restart must find the run
        fields["out"] = str(default if args.resume or args.overwrite or restartable() else free_output_dir(default))
        if reports and fields["out"] != str(default):
            print(f"{default} holds an earlier run; this one trains into {fields['out']} "
                  f"(--out DIR to choose, --overwrite to replace {default})")
    cfg = TrainConfig(**fields)
    try:
        result = train(cfg, resume=args.resume, overwrite=args.overwrite, explicit=set(given))
    except Stopped as stop:  # SIGTERM / SIGINT: a resume point at the step in progress
        if reports:
            print(f"mpdagl train: {stop}: continue with `mpdagl train --out {cfg.out} --resume`", file=sys.stderr)
        return stop.exit_code
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
    p = sub.add_parser("eval", help="evaluate a saved model on its test split",
                       description="Load DIR/config.json + DIR/model.safetensors and evaluate.")
    p.add_argument("folder", metavar="DIR", nargs="?", help="a training output folder, or a Hub model repo (user/name)")
    p.add_argument("--checkpoint", help="the same as DIR")
    p.add_argument("--dataset", help="evaluate on this dataset instead of the one in config.json")
    p.add_argument("--data-path", help="local copy of the dataset (default: the training run's --data-path)")
    p.add_argument("--image-column", help="image column (default: the training run's, or guessed)")
    p.add_argument("--label-column", help="label column (default: the training run's, or guessed)")
    p.add_argument("--batch-size", type=int, default=256, help="test images per batch (default 256)")
    p.add_argument("--device", default="auto", help="cuda, cuda:1, cpu or auto (default: cuda when available)")
    p.add_argument("--import", dest="imports", nargs="+", default=[], metavar="NAME",
                   help="Python modules to import first: those that register your own architectures")


def _eval(args: argparse.Namespace) -> int:
    from mpdagl_triton import data
    from mpdagl_triton.errors import InvalidInput
    from mpdagl_triton.hub import load, local_folder
    from mpdagl_triton.runtime import resolve_device
    from mpdagl_triton.train import STATE_JSON, TrainConfig, evaluate, import_modules

    import_modules(args.imports)
    args.checkpoint = args.checkpoint or args.folder
    if args.checkpoint is None:
        raise InvalidInput("name the model to evaluate: mpdagl eval DIR (a training folder or a Hub repo id)")
    device = resolve_device(args.device)
    model = load(args.checkpoint, device=device)
    name = args.dataset or model.dataset
    if name is None:
        raise InvalidInput(f"{args.checkpoint}/config.json names no dataset; pass --dataset")
    source = {"data_path": args.data_path, "image_column": args.image_column, "label_column": args.label_column,
              "dvs_split": None, "dvs_frames": None}
    folder = local_folder(args.checkpoint)
    if name == model.dataset and folder is not None and (folder / STATE_JSON).is_file():
        # the run's own dataset: read it where the run did
        trained = json.loads((folder / STATE_JSON).read_text())["config"]
        source = {key: value if value is not None else trained.get(key) for key, value in source.items()}
    dataset = data.load(name, path=source["data_path"], timesteps=model.timesteps,
                        image_column=source["image_column"], label_column=source["label_column"],
                        dvs_split=source["dvs_split"], dvs_frames=source["dvs_frames"])
    if (dataset.num_classes, dataset.in_channels) != (model.num_classes, model.in_channels):
        raise InvalidInput(f"{name} has {dataset.num_classes} classes of {dataset.in_channels}-channel images; "
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
                                   "stored `hf auth login`.")
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
    p = sub.add_parser("energy", help="the paper's energy estimate for a training folder",
                       description="#Add = sum over spiking layers of input rate x T x MACs; #Mult = T x "
                                   "(encoding + readout MACs); E = 0.9 pJ #Add + 4.6 pJ #Mult, against "
                                   "the iso-ANN's 4.6 pJ per MAC (docs/method.md#energy-estimate). Rates come "
                                   "from the last epoch's probe.")
    p.add_argument("folder", metavar="DIR", help="a training output folder")


def _energy(args: argparse.Namespace) -> int:
    from mpdagl_triton.analysis import energy, read_run
    from mpdagl_triton.errors import InvalidInput

    rows, config = read_run(args.folder)
    if not rows[-1].get("synapses"):
        raise InvalidInput(f"{args.folder}/metrics.jsonl has no per-layer synapse statistics")
    e = energy(rows[-1]["synapses"], config["timesteps"])
    print(f"{args.folder} (epoch {rows[-1]['epoch']}, T = {config['timesteps']}):")
    print(f"  SNN     #Add {e['adds'] / 1e6:10.2f} M   #Mult {e['mults'] / 1e6:8.2f} M   energy {e['snn_mj']:.4f} mJ")
    print(f"  iso-ANN  MACs {e['ann_macs'] / 1e6:9.2f} M                     energy {e['ann_mj']:.4f} mJ")
    print(f"  SNN / ANN energy {e['ratio']:.3f}")
    return 0


def _export_parser(sub) -> None:
    p = sub.add_parser("export", help="write a trained model as a NIR graph or an AOTInductor package",
                       description="nir: a NIR graph (HDF5) that SpikingJelly, snnTorch, Norse, Sinabs, "
                                   "Rockpool or Lava import (tdBN folded into the convolutions, each "
                                   "neuron an nir.LIF; needs pip install 'mpdagl-triton[nir]'). pt2: "
                                   "torch.export + AOTInductor, loaded with "
                                   "torch._inductor.aoti_load_package (minutes of compiling on a CPU). "
                                   "See docs/deploy.md.")
    p.add_argument("folder", metavar="DIR", help="a training output folder, or a Hub model repo (user/name)")
    p.add_argument("--format", required=True, choices=["nir", "pt2"], help="nir or pt2")
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write (replaced atomically)")
    p.add_argument("--device", default="cpu",
                   help="pt2 only: compile for cpu or cuda (default cpu); the package runs on that device")
    p.add_argument("--import", dest="imports", nargs="+", default=[], metavar="NAME",
                   help="Python modules to import first: those that register your own architectures")


def _export(args: argparse.Namespace) -> int:
    from mpdagl_triton.export import check_writable, write_nir, write_pt2
    from mpdagl_triton.hub import load
    from mpdagl_triton.train import import_modules

    import_modules(args.imports)
    check_writable(args.out)
    device = args.device if args.format == "pt2" else "cpu"
    model = load(args.folder, device=device)
    if args.format == "nir":
        write_nir(model, args.out)
        print(f"wrote {args.out}: NIR graph of {args.folder} ({model.arch}, T = {model.timesteps}); "
              "logits = mean over T of its output")
    else:
        write_pt2(model, args.out)
        print(f"wrote {args.out}: AOTInductor package of {args.folder} for {device}; load it with "
              "mpdagl_triton.export.load_pt2 (or import mpdagl_triton.ops, then "
              "torch._inductor.aoti_load_package)")
    return 0


COMMANDS = {"train": (_train_parser, _train), "eval": (_eval_parser, _eval),
            "analyze": (_analyze_parser, _analyze), "energy": (_energy_parser, _energy),
            "push": (_push_parser, _push), "export": (_export_parser, _export)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mpdagl", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"mpdagl-triton {_version()}")
    sub = parser.add_subparsers(dest="command")
    for add_parser, _ in COMMANDS.values():
        add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``mpdagl`` command. The library's own errors (``errors.MpdaglError``) print one line
    and exit with their code (2 for bad input, 1 otherwise); Ctrl-C at any point exits with 130;
    anything else is a bug and keeps its traceback."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("mpdagl: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    from mpdagl_triton.errors import MpdaglError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command][1](args)
    except MpdaglError as exc:
        print(f"mpdagl {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
