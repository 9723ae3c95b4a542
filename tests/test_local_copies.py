"""Local copies of Hub datasets, laid out as ``hf download REPO --repo-type dataset --local-dir DIR``
leaves them, load as the same datasets do from the Hub: whatever folder of the copy is passed,
whatever images come first, whatever the README lists."""

import io
import json
import shutil

import numpy as np
import pytest
import torch

from support.fake_data import hf_download, random_images
from mpdagl_triton import cli, data
from mpdagl_triton.errors import InvalidInput

TINY_CLASSES = [f"n{i:08d}" for i in range(200)]


def tiny_imagenet(root, *, configs=True, n_train=24, n_valid=6, grey_first=0, label_column="label"):
    """zh-plus/tiny-imagenet: data/{train,valid}-*.parquet, 200 classes of 64x64 images."""
    import datasets

    rng = np.random.default_rng(3)
    features = datasets.Features({"image": datasets.Image(), label_column: datasets.ClassLabel(names=TINY_CLASSES)})
    shards = {
        "data/train-00000-of-00001-1359597a978bc4fa.parquet": {
            "image": random_images(n_train, 64, 1, grey_first=grey_first),
            label_column: rng.integers(0, 200, n_train).tolist()},
        "data/valid-00000-of-00001-70d52db3c749a935.parquet": {
            "image": random_images(n_valid, 64, 2), label_column: rng.integers(0, 200, n_valid).tolist()},
    }
    return hf_download(root, shards, features, splits={"train": "data/train-*", "valid": "data/valid-*"},
                       configs=configs)


def cifar100(root, *, configs=True):
    """uoft-cs/cifar100: cifar100/{train,test}-*.parquet, fine and coarse labels."""
    import datasets

    rng = np.random.default_rng(4)
    features = datasets.Features({"img": datasets.Image(),
                                  "fine_label": datasets.ClassLabel(names=[f"f{i}" for i in range(100)]),
                                  "coarse_label": datasets.ClassLabel(names=[f"c{i}" for i in range(20)])})
    shards = {f"cifar100/{split}-00000-of-00001.parquet": {
        "img": random_images(n, 32, seed), "fine_label": rng.integers(0, 100, n).tolist(),
        "coarse_label": rng.integers(0, 20, n).tolist()} for split, n, seed in (("train", 12, 5), ("test", 5, 6))}
    return hf_download(root, shards, features, config="cifar100", configs=configs,
                       splits={"train": "cifar100/train-*", "test": "cifar100/test-*"})


def as_datasets_decodes(root, split: str, column: str) -> np.ndarray:
    """The split's images as ``datasets`` itself decodes the copy (README configs honoured), RGB."""
    import datasets

    images = datasets.load_dataset(str(root))[split][column]
    return np.stack([np.asarray(im.convert("RGB")).transpose(2, 0, 1) for im in images])


def assert_same(a: data.Dataset, b: data.Dataset) -> None:
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.train.labels, b.train.labels)
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.test.labels, b.test.labels)
    assert (a.label_names, a.test_split, a.mean, a.augmentation) == (b.label_names, b.test_split, b.mean,
                                                                     b.augmentation)


@pytest.mark.parametrize("passed", ["the copy", "the copy without configs", "its data folder",
                                    "a parent holding it"])
@pytest.mark.slow
def test_tiny_imagenet_evaluates_its_valid_split_whatever_folder_is_passed(tmp_path, passed):
    """Without README ``configs:`` datasets names the valid shard ``validation``; the copy must
    still load as the Hub's, its held-out split named as the repo names it."""
    hub = tiny_imagenet(tmp_path / "hub")
    expected = data.load("tiny-imagenet", path=str(hub))
    assert expected.test_split == "valid" and expected.train.images.shape == (24, 3, 64, 64)
    assert np.array_equal(expected.test.images.numpy(), as_datasets_decodes(hub, "valid", "image"))
    copy = tiny_imagenet(tmp_path / "parent" / "tiny-imagenet", configs=passed == "the copy")
    folder = {"the copy": copy, "the copy without configs": copy, "its data folder": copy / "data",
              "a parent holding it": tmp_path / "parent"}[passed]
    assert_same(data.load("tiny-imagenet", path=str(folder)), expected)


@pytest.mark.parametrize("configs", [True, False])
def test_cifar100_copy_loads_as_from_the_hub(tmp_path, configs):
    root = cifar100(tmp_path / "cifar100", configs=configs)
    ds = data.load("cifar100", path=str(root))
    assert ds.num_classes == 100 and ds.test_split == "test" and len(ds.test) == 5
    assert np.array_equal(ds.train.images.numpy(), as_datasets_decodes(root, "train", "img"))
    import datasets

    assert ds.train.labels.tolist() == datasets.load_dataset(str(root))["train"]["fine_label"]


def test_the_channels_of_a_known_dataset_do_not_depend_on_its_first_images(tmp_path):
    """Tiny-ImageNet holds some greyscale images: the first 20 here, more than any sample of the
    first images would look at. They become RGB (three equal planes); colour stays colour."""
    root = tiny_imagenet(tmp_path / "tiny", grey_first=20)
    ds = data.load("tiny-imagenet", path=str(root))
    assert ds.in_channels == 3 and ds.train.images.shape == (24, 3, 64, 64)
    grey = ds.train.images[:20]
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])
    assert np.array_equal(ds.train.images.numpy(), as_datasets_decodes(root, "train", "image"))
    assert not torch.equal(ds.train.images[20, 0], ds.train.images[20, 1])  # colour kept


@pytest.mark.parametrize("order", ["grey first", "colour first"])
def test_an_unknown_dataset_takes_the_widest_mode_of_its_split(tmp_path, order):
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    images = random_images(40, 8, 7, grey_first=38)  # two colour images among 40
    if order == "colour first":
        images = images[::-1]
    mixed = hf_download(tmp_path / "mixed", {
        "data/train-00000-of-00001.parquet": {"image": images, "label": [i % 2 for i in range(40)]},
        "data/test-00000-of-00001.parquet": {"image": random_images(4, 8, 8, grey_first=4), "label": [0, 1, 0, 1]},
    }, features)
    ds = data.load(str(mixed))
    assert ds.in_channels == 3 and len(ds.mean) == 3
    colour = 38 if order == "grey first" else 0
    assert not torch.equal(ds.train.images[colour, 0], ds.train.images[colour, 1])
    greyscale = hf_download(tmp_path / "grey", {
        "data/train-00000-of-00001.parquet": {"image": random_images(6, 8, 9, grey_first=6), "label": [0, 1] * 3},
        "data/test-00000-of-00001.parquet": {"image": random_images(2, 8, 8, grey_first=2), "label": [0, 1]},
    }, features)
    assert data.load(str(greyscale)).train.images.shape == (6, 1, 8, 8)


@pytest.mark.parametrize("second", ["cifar100", "tiny-imagenet-again"])
def test_a_folder_holding_two_copies_names_them(tmp_path, capsys, second):
    """Read as one dataset, two copies' shards would merge (another dataset: a CastError listing
    every class of both; the same one twice: every image twice): refused, naming the copies."""
    parent = tmp_path / "datasets"
    tiny_imagenet(parent / "tiny-imagenet")
    if second == "cifar100":
        cifar100(parent / "cifar100")
    else:
        tiny_imagenet(parent / "tiny-imagenet-again", configs=False)
    copies = sorted(["tiny-imagenet", second])
    message = (f"{parent} holds 2 datasets ({', '.join(copies)}), read as one; "
               f"pass one of them: {parent / copies[0]} or {parent / copies[1]}")
    with pytest.raises(InvalidInput) as err:
        data.load("tiny-imagenet", path=str(parent))
    assert str(err.value) == message
    capsys.readouterr()
    argv = ["train", "--dataset", str(parent), "--epochs", "1", "--out", str(tmp_path / "run")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"mpdagl train: error: {message}" and "CastError" not in err


def test_a_label_column_named_labels_is_picked_up(tmp_path):
    import datasets

    features = datasets.Features({"img": datasets.Image(), "labels": datasets.ClassLabel(names=list("abcdefghij"))})
    shards = {f"plain_text/{split}-00000-of-00001.parquet": {"img": random_images(n, 32, n), "labels": list(range(n))}
              for split, n in (("train", 10), ("test", 4))}
    root = hf_download(tmp_path / "cifar10", shards, features, config="plain_text",
                       splits={"train": "plain_text/train-*", "test": "plain_text/test-*"})
    ds = data.load("cifar10", path=str(root))
    assert ds.train.labels.tolist() == list(range(10)) and ds.label_names == list("abcdefghij")
    # plain integers (no ClassLabel) in an unknown dataset: the usual name is enough
    plain = datasets.Features({"image": datasets.Image(), "labels": datasets.Value("int64"),
                               "size": datasets.Value("int64")})
    shards = {f"data/{split}-00000-of-00001.parquet": {"image": random_images(n, 8, n), "labels": [2, 0, 1, 2][:n],
                                                       "size": [8] * n} for split, n in (("train", 4), ("test", 3))}
    ds = data.load(str(hf_download(tmp_path / "plain", shards, plain)))
    assert ds.train.labels.tolist() == [2, 0, 1, 2] and ds.label_names == ["0", "1", "2"]
    with pytest.raises(InvalidInput, match="^no label column 'label'; available columns: img, labels$"):
        data.load("cifar10", path=str(root), label_column="label")
    # a named dataset never takes another class column by its type: CIFAR-100 without fine labels
    coarse = cifar100(tmp_path / "coarse")
    import pyarrow.parquet as pq

    for shard in (coarse / "cifar100").glob("*.parquet"):
        pq.write_table(pq.read_table(shard).drop_columns(["fine_label"]), shard)
    readme = (coarse / "README.md").read_text()
    (coarse / "README.md").write_text("---\n" + readme[readme.index("configs:"):])  # no dataset_info
    with pytest.raises(InvalidInput, match=r"cannot tell which column holds the labels; pass --label-column "
                                           r"\(available columns: img, coarse_label\)"):
        data.load("cifar100", path=str(coarse))
    assert data.load("cifar100", path=str(coarse), label_column="coarse_label").num_classes == 20


def test_an_image_column_written_by_plain_pyarrow(tmp_path):
    """pyarrow types a ``path`` field that is None everywhere as null: still images."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    root = tmp_path / "plain"
    (root / "data").mkdir(parents=True)
    colours = {}
    for split, n in (("train", 6), ("test", 3)):
        cells = []
        for i in range(n):
            buffer = io.BytesIO()
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(buffer, "PNG")
            cells.append({"bytes": buffer.getvalue(), "path": None})
        table = pa.table({"image": pa.array(cells), "label": pa.array([i % 2 for i in range(n)], pa.int64())})
        assert table.schema.field("image").type.field("path").type == pa.null()
        pq.write_table(table, root / "data" / f"{split}-00000-of-00001.parquet")
        colours[split] = [40 * i for i in range(n)]
    (root / "README.md").write_text("---\nlicense: mit\n---\n")
    ds = data.load(str(root))
    assert ds.train.images.shape == (6, 3, 8, 8)
    assert ds.train.images[:, 0, 0, 0].tolist() == colours["train"]
    assert ds.test.images[:, 2, 7, 7].tolist() == colours["test"]


def test_bad_data_is_invalid_input_with_the_fix(tmp_path, capsys):
    """Data the user can fix is bad input (exit code 2), one line naming the problem and the fix."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    shards = {f"data/{split}-00000-of-00001.parquet": {"image": random_images(2, 8, 0), "label": [0, 1]}
              for split in ("train", "holdout")}
    odd = hf_download(tmp_path / "odd", shards, features)
    with pytest.raises(InvalidInput, match=r"has no test split \(test / valid / validation\); splits: train, "
                                           r"holdout: name the held-out shards test-\*.parquet"):
        data.load(str(odd))
    no_valid = tiny_imagenet(tmp_path / "tiny")
    shutil.rmtree(no_valid / "data")
    (no_valid / "data").mkdir()
    cifar100(tmp_path / "c100")
    shutil.copytree(tmp_path / "c100" / "cifar100", no_valid / "data", dirs_exist_ok=True)
    with pytest.raises(InvalidInput, match="dataset 'tiny-imagenet' has no 'valid' split .*splits: train, test.*"
                                           "hf download zh-plus/tiny-imagenet"):
        data.load("tiny-imagenet", path=str(no_valid / "data"))
    capsys.readouterr()
    argv = ["train", "--dataset", str(odd), "--epochs", "1", "--out", str(tmp_path / "run")]
    assert cli.main(argv) == 2
    last_line = capsys.readouterr().err.splitlines()[-1]
    assert last_line.startswith(f"mpdagl train: error: dataset '{odd}' has no test split")


@pytest.mark.slow


def test_the_model_card_names_the_split_evaluated(tmp_path):
    """Tiny-ImageNet's accuracy is measured on its valid split: metrics.jsonl and the card's
    model-index say so."""
    from huggingface_hub import ModelCard

    from mpdagl_triton import publish
    from mpdagl_triton.train import TrainConfig, train

    root = tiny_imagenet(tmp_path / "tiny", n_train=8, n_valid=4)
    out = tmp_path / "run"
    train(TrainConfig(dataset="tiny-imagenet", data_path=str(root), arch="tiny", epochs=1, batch_size=8,
                      device="cpu", probe_size=4, out=str(out)))
    (row,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert row["test_split"] == "valid"
    card = ModelCard(publish.model_card(out, "me/tiny"))
    (result,) = card.data.eval_results
    assert (result.dataset_type, result.dataset_split) == ("zh-plus/tiny-imagenet", "valid")
    assert result.metric_value == round(100 * row["test_acc"], 2)
    assert "| valid accuracy (epoch 1) |" in card.text and "test accuracy" not in card.text


LOAD_AND_REPORT_PEAK = """
import sys
import datasets, PIL.Image  # imported before the measure: the load imports them
from mpdagl_triton import data

def kib(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))

open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) restarts from here
before = kib("VmRSS:")
ds = data.load("tiny-imagenet", path=sys.argv[1])
print((kib("VmHWM:") - before) * 1024, ds.train.images.numel() + ds.test.images.numel())  # the peak's rise, bytes
"""


@pytest.mark.slow


def test_a_decoded_split_is_read_back_in_about_its_own_memory(tmp_path):
    """The decoded images are copied once out of the Arrow cache: reading them back through
    numpy formatting (an Array3D column goes through nested Python lists) peaks at ~13x the split."""
    import subprocess
    import sys

    root = tiny_imagenet(tmp_path / "tiny", n_train=3000, n_valid=200)
    first = data.load("tiny-imagenet", path=str(root))  # decodes and caches
    out = subprocess.run([sys.executable, "-c", LOAD_AND_REPORT_PEAK, str(root)], capture_output=True, text=True,
                         check=True).stdout.split()
    grown, pixels = int(out[-2]), int(out[-1])
    assert pixels == first.train.images.numel() + first.test.images.numel() == 3200 * 3 * 64 * 64
    assert grown < 3 * pixels, f"reading {pixels / 2**20:.0f} MiB of images raised the peak by {grown / 2**20:.0f} MiB"
