"""Fake datasets on disk, laid out as ``hf download`` leaves a Hub dataset (parquet shards, a
README whose YAML front matter describes them, .gitattributes, .cache/huggingface/), and fake
CIFAR10-DVS AEDAT folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def random_images(n: int, size: int, seed: int, grey_every: int = 0, grey_first: int = 0):
    """RGB images but every ``grey_every``-th and the first ``grey_first``, greyscale (mode L)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        if (grey_every and i % grey_every == 0) or i < grey_first:
            images.append(Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), mode="L"))
        else:
            images.append(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), mode="RGB"))
    return images


def write_hub_dataset(root: Path, config: str, splits: dict, image_column: str, label_columns: dict) -> Path:
    """``splits``: split -> (PIL images, {label column: values}); ``label_columns``: column -> names.
    Shards ``{config}/{split}-00000-of-00001.parquet``, listed in the README's ``configs:``."""
    import datasets

    features = {image_column: datasets.Image()}
    features.update({c: datasets.ClassLabel(names=names) for c, names in label_columns.items()})
    shards = {f"{config}/{split}-00000-of-00001.parquet": {image_column: images, **labels}
              for split, (images, labels) in splits.items()}
    return hf_download(root, shards, datasets.Features(features), config=config,
                       splits={split: f"{config}/{split}-*" for split in splits})


def hf_download(root: Path, shards: dict, features, *, splits: dict | None = None,
                configs: bool = True, config: str = "default") -> Path:
    """A dataset as ``hf download REPO --repo-type dataset --local-dir ROOT`` leaves it.

    ``shards``: path inside the repo (``data/valid-00000-of-00001.parquet``) -> rows, a dict of
    columns; ``splits``: split name -> shard path pattern for the README's ``configs:`` (default:
    the shards' name prefixes), left out with ``configs=False`` as in repos whose README only
    describes ``dataset_info``. Beside the shards: README.md with YAML front matter,
    .gitattributes, and the download metadata that huggingface_hub keeps under .cache/huggingface/.
    """
    import datasets
    import yaml

    counts = {}
    for path, rows in shards.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        table = datasets.Dataset.from_dict(rows, features=features)
        table.to_parquet(str(root / path))
        counts[path] = len(table)
        metadata = root / ".cache" / "huggingface" / "download" / f"{path}.metadata"
        metadata.parent.mkdir(parents=True, exist_ok=True)
        metadata.write_text(f"{'0' * 40}\n{'1' * 64}\n1700000000.0\n")
    (root / ".cache" / "huggingface" / ".gitignore").write_text("*\n")
    splits = splits or {Path(path).name.split("-")[0]: path for path in shards}
    card = {"dataset_info": {
        "features": features._to_yaml_list(),
        "splits": [{"name": split, "num_examples": sum(n for path, n in counts.items()
                                                       if Path(path).match(pattern))}
                   for split, pattern in splits.items()]}}
    if configs:
        card["configs"] = [{"config_name": config,
                            "data_files": [{"split": split, "path": pattern} for split, pattern in splits.items()]}]
    (root / "README.md").write_text("---\n" + yaml.safe_dump(card, sort_keys=False) + "---\n\n# A fake dataset\n")
    (root / ".gitattributes").write_text("*.parquet filter=lfs diff=lfs merge=lfs -text\n")
    return root


def fake_cifar(root: Path, n_train=24, n_test=10, classes=10, label_column="label", size=32,
               grey_every=0, test_split="test", config="plain_text", image_column="img") -> Path:
    rng = np.random.default_rng(0)
    names = [f"class{i}" for i in range(classes)]
    splits = {
        "train": (random_images(n_train, size, 1, grey_every),
                  {label_column: rng.integers(0, classes, n_train).tolist()}),
        test_split: (random_images(n_test, size, 2, grey_every),
                     {label_column: rng.integers(0, classes, n_test).tolist()}),
    }
    return write_hub_dataset(root, config, splits, image_column, {label_column: names})


def fake_dvs(root: Path, classes=("airplane", "automobile"), files_per_class=10, events=400, seed=0) -> Path:
    from mpdagl_triton.events import write_aedat

    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(files_per_class):
            t = np.sort(rng.integers(0, 100_000, events))
            x = rng.integers(0, 64, events) + 64 * label  # the classes differ in where events land
            y = rng.integers(0, 128, events)
            p = rng.integers(0, 2, events)
            write_aedat(root / name / f"cifar10_{name}_{i}.aedat", t, x, y, p)
    return root
