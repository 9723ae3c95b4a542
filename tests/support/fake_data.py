"""Fake datasets on disk, laid out as the Hugging Face Hub lays them out (parquet shards plus a
README whose YAML front matter declares the configs), and fake CIFAR10-DVS AEDAT folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def random_images(n: int, size: int, seed: int, grey_every: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        if grey_every and i % grey_every == 0:
            images.append(Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), mode="L"))
        else:
            images.append(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), mode="RGB"))
    return images


def write_hub_dataset(root: Path, config: str, splits: dict, image_column: str, label_columns: dict,
                      extra_columns: dict | None = None) -> Path:
    """``splits``: split -> (PIL images, {label column: values}); ``label_columns``: column -> names."""
    import datasets

    features = {image_column: datasets.Image()}
    features.update({c: datasets.ClassLabel(names=names) for c, names in label_columns.items()})
    features = datasets.Features(features)
    (root / config).mkdir(parents=True, exist_ok=True)
    yaml = ["---", "configs:", f"- config_name: {config}", "  data_files:"]
    for split, (images, labels) in splits.items():
        table = {image_column: images, **labels}
        datasets.Dataset.from_dict(table, features=features).to_parquet(
            str(root / config / f"{split}-00000-of-00001.parquet"))
        yaml += [f"  - split: {split}", f"    path: {config}/{split}-*"]
    yaml += ["---", "", "A fake dataset for tests."]
    (root / "README.md").write_text("\n".join(yaml) + "\n")
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
