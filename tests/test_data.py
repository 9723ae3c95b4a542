"""Data: Hub-layout datasets read offline, decode-once caching, CIFAR10-DVS events, augmentation."""

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from support.fake_data import fake_cifar, fake_dvs, write_hub_dataset, random_images
from mpdagl_triton import augment, cli, data, events
from mpdagl_triton.augment import EventAugment, ImageAugment, random_crop_flip
from mpdagl_triton.errors import InvalidInput


class Dispatches(TorchDispatchMode):
    """The ops dispatched inside it, by name: on a GPU each costs host time, most a launch."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.__name__)
        return func(*args, **(kwargs or {}))


def pixels(image) -> np.ndarray:
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return array.transpose(2, 0, 1)


def test_cifar10_from_a_local_hub_layout(tmp_path):
    root = fake_cifar(tmp_path / "cifar10")
    ds = data.load("cifar10", path=str(root))
    assert ds.train.images.shape == (24, 3, 32, 32) and ds.train.images.dtype == torch.uint8
    assert ds.test.images.shape == (10, 3, 32, 32)
    assert ds.train.labels.dtype == torch.int64
    assert ds.label_names == [f"class{i}" for i in range(10)]
    assert ds.mean == data.CIFAR_MEAN and ds.augmentation == "cifar"
    import datasets

    source = datasets.load_dataset(str(root))["train"]
    assert np.array_equal(ds.train.images[3].numpy(), pixels(source[3]["img"]))
    assert ds.train.labels.tolist() == source["label"]


def test_cifar100_uses_the_fine_labels(tmp_path):
    rng = np.random.default_rng(0)
    splits = {s: (random_images(n, 32, i), {"fine_label": rng.integers(0, 100, n).tolist(),
                                             "coarse_label": rng.integers(0, 20, n).tolist()})
              for i, (s, n) in enumerate((("train", 12), ("test", 6)))}
    root = write_hub_dataset(tmp_path / "c100", "cifar100", splits, "img",
                             {"fine_label": [f"f{i}" for i in range(100)],
                              "coarse_label": [f"c{i}" for i in range(20)]})
    ds = data.load("cifar100", path=str(root))
    assert ds.num_classes == 100
    assert ds.train.labels.tolist() == splits["train"][1]["fine_label"]


def test_tiny_imagenet_greyscale_becomes_rgb(tmp_path):
    root = fake_cifar(tmp_path / "tiny", n_train=9, n_test=4, classes=200, size=64, grey_every=3,
                      test_split="valid", config="default", image_column="image")
    ds = data.load("tiny-imagenet", path=str(root))
    assert ds.train.images.shape == (9, 3, 64, 64) and ds.test.images.shape == (4, 3, 64, 64)
    grey = ds.train.images[0]  # image 0 was saved as mode "L"
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert ds.augmentation == "crop-flip" and ds.mean == data.IMAGENET_MEAN


def test_any_local_folder_with_named_columns(tmp_path):
    rng = np.random.default_rng(1)
    splits = {s: (random_images(n, 16, i), {"target": rng.integers(0, 3, n).tolist()})
              for i, (s, n) in enumerate((("train", 8), ("validation", 4)))}
    root = write_hub_dataset(tmp_path / "mine", "default", splits, "picture", {"target": ["a", "b", "c"]})
    ds = data.load(str(root))
    assert ds.train.images.shape == (8, 3, 16, 16) and ds.label_names == ["a", "b", "c"]
    assert len(ds.mean) == 3 and all(0 < m < 1 for m in ds.mean)  # measured on the train images
    with pytest.raises(ValueError, match="no image column 'img'; available columns: picture, target"):
        data.load(str(root), image_column="img")
    with pytest.raises(ValueError, match="no label column 'y'; available columns: picture, target"):
        data.load(str(root), label_column="y")


def test_class_names_as_text_labels(tmp_path):
    """Labels stored as text (no ClassLabel): classes are the sorted names over both splits, a
    class seen only in the test split included."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    (tmp_path / "text" / "data").mkdir(parents=True)
    for split, labels in (("train", ["dog", "cat", "dog", "cat"]), ("test", ["owl", "cat"])):
        datasets.Dataset.from_dict({"image": random_images(len(labels), 8, 3), "label": labels}, features=features) \
            .to_parquet(str(tmp_path / "text" / "data" / f"{split}-00000-of-00001.parquet"))
    ds = data.load(str(tmp_path / "text"))
    assert ds.label_names == ["cat", "dog", "owl"]
    assert ds.train.labels.tolist() == [1, 0, 1, 0] and ds.test.labels.tolist() == [2, 0]


def test_an_image_folder_per_class(tmp_path):
    """The Hub's image-folder layout, split/class/*.png: classes from the folder names."""
    for split, per_class in (("train", 3), ("test", 2)):
        for label, name in enumerate(("cat", "dog")):
            (tmp_path / "pets" / split / name).mkdir(parents=True)
            for i, image in enumerate(random_images(per_class, 8, 10 * label + len(split))):
                image.save(tmp_path / "pets" / split / name / f"{i}.png")
    ds = data.load(str(tmp_path / "pets"))
    assert ds.label_names == ["cat", "dog"] and ds.train.images.shape == (6, 3, 8, 8)
    assert sorted(ds.train.labels.tolist()) == [0, 0, 0, 1, 1, 1] and sorted(ds.test.labels.tolist()) == [0, 0, 1, 1]


def test_decoded_once_then_read_from_the_arrow_cache(tmp_path, monkeypatch):
    from PIL import Image

    root = fake_cifar(tmp_path / "c10")
    converted = []
    real_convert = Image.Image.convert
    monkeypatch.setattr(Image.Image, "convert", lambda self, *a, **k: converted.append(1) or real_convert(self, *a, **k))
    first = data.load("cifar10", path=str(root))
    assert len(converted) == 34  # every train and test image decoded once
    second = data.load("cifar10", path=str(root))
    assert len(converted) == 34  # the second load reads the cached Arrow arrays
    assert torch.equal(first.train.images, second.train.images)


def test_a_local_folder_rewritten_in_place_is_read_again(tmp_path):
    """datasets keys its cache of a folder with README configs on the README alone; replaced
    shards must not come back as the old copy (or its decoded arrays)."""
    root = fake_cifar(tmp_path / "c10", n_train=24, n_test=10)
    assert len(data.load("cifar10", path=str(root)).test) == 10
    fake_cifar(root, n_train=16, n_test=6)
    again = data.load("cifar10", path=str(root))
    assert len(again.train) == 16 and len(again.test) == 6


def test_corrupt_image_names_its_index(tmp_path):
    import datasets

    root = fake_cifar(tmp_path / "bad")
    shard = root / "plain_text" / "train-00000-of-00001.parquet"
    table = datasets.Dataset.from_parquet(str(shard))
    rows = table.cast_column("img", datasets.Image(decode=False)).to_list()
    rows[5]["img"] = {"bytes": b"not an image at all", "path": None}
    features = datasets.Features({"img": datasets.Image(), "label": table.features["label"]})
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(shard))
    with pytest.raises(data.CorruptImageError, match="cifar10 train: image 5 cannot be decoded"):
        data.load("cifar10", path=str(root))


def test_offline_without_a_cached_copy():
    with pytest.raises(data.DataUnavailableError, match="could not fetch dataset 'uoft-cs/cifar10'.*--data-path"):
        data.load("cifar10")


def test_a_local_folder_without_data_is_bad_input_without_hub_advice(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for name, path in ((str(empty), None), ("cifar10", str(empty))):  # --dataset DIR, --data-path DIR
        with pytest.raises(InvalidInput, match=f"^{empty} holds no data files; pass the folder that `hf download") \
                as err:
            data.load(name, path=path)
        assert "Hugging Face Hub" not in str(err.value)
    with pytest.raises(InvalidInput, match="--data-path .*missing is not a folder"):
        data.load("cifar10", path=str(tmp_path / "missing"))


def test_unknown_dataset_lists_the_names(capsys, tmp_path):
    assert cli.main(["train", "--dataset", "mnist", "--out", str(tmp_path)]) == 2
    assert "unknown dataset 'mnist'; available: digits, cifar10, cifar100, tiny-imagenet, cifar10-dvs" in \
        capsys.readouterr().err


# -- CIFAR10-DVS -------------------------------------------------------------------------------


def test_aedat_round_trip_and_equal_count_frames(tmp_path):
    t = np.array([5, 1, 3, 7, 2, 9])
    x = np.array([0, 1, 2, 3, 127, 5])
    y = np.array([10, 11, 12, 13, 0, 15])
    p = np.array([1, 0, 1, 1, 0, 0])
    events.write_aedat(tmp_path / "a.aedat", t, x, y, p)
    read = events.read_aedat(tmp_path / "a.aedat")
    assert read["t"].tolist() == t.tolist() and read["x"].tolist() == x.tolist()
    assert read["y"].tolist() == y.tolist() and read["p"].tolist() == p.tolist()
    frames = events.to_frames(read, timesteps=2, size=128, rule="even")
    assert frames.shape == (2, 2, 128, 128)
    assert frames.sum().item() == 6 and frames[0].sum() == 3 and frames[1].sum() == 3  # equal counts
    # earliest three by time: t=1 (x=1, y=11, p=0), t=2 (x=127, y=0, p=0), t=3 (x=2, y=12, p=1)
    assert frames[0, 1, 127 - 1, 127 - 11] == 1  # OFF -> channel 1, row 127-x, col 127-y
    assert frames[0, 1, 0, 127] == 1
    assert frames[0, 0, 127 - 2, 127 - 12] == 1
    small = events.to_frames(read, timesteps=2, rule="even")
    assert small.shape == (2, 2, 48, 48)
    # area resize: each output pixel is the mean of its (overlapping) window of input pixels
    torch.testing.assert_close(small, torch.nn.functional.adaptive_avg_pool2d(frames, 48))
    # the event at (row 126, col 116) falls in output (47, 43), whose window is rows 125-127, cols 114-117
    assert small[0, 1, 47, 43] == pytest.approx(frames[0, 1, 125:128, 114:118].mean().item())
    assert small[0, 1, 47, 43] == pytest.approx(1 / 12)


def test_truncated_aedat_file(tmp_path):
    events.write_aedat(tmp_path / "a.aedat", [1, 2], [3, 4], [5, 6], [0, 1])
    data_bytes = (tmp_path / "a.aedat").read_bytes()
    (tmp_path / "a.aedat").write_bytes(data_bytes[:-3])
    with pytest.raises(events.EventFileError, match="not a whole number of 8-byte events"):
        events.read_aedat(tmp_path / "a.aedat")


def test_cifar10_dvs_split_and_cache(tmp_path):
    root = fake_dvs(tmp_path / "dvs")
    ds = data.load("cifar10-dvs", path=str(root), timesteps=3)
    assert ds.label_names == ["airplane", "automobile"]
    assert ds.train.images.shape == (18, 3, 2, 48, 48) and ds.test.images.shape == (2, 3, 2, 48, 48)
    assert ds.train.images.dtype == torch.float16 and ds.augmentation == "dvs"
    assert ds.test.labels.tolist() == [0, 1]  # file 9 of each class
    expected = events.to_frames(events.read_aedat(root / "automobile" / "cifar10_automobile_9.aedat"), 3)
    torch.testing.assert_close(ds.test.images[1].float(), expected, atol=1e-2, rtol=1e-2)
    assert (root / ".mpdagl-frames-T3-48-spikingjelly-first90").is_dir()
    with pytest.raises(data.DataUnavailableError, match="no Hub copy"):
        data.load("cifar10-dvs", timesteps=3)


def test_cifar10_dvs_frames_are_reused_until_the_recordings_change(tmp_path, monkeypatch):
    """The converted frames are read back while the recordings are unchanged, and converted
    again (not silently reused) when a recording is replaced, removed or added."""
    root = fake_dvs(tmp_path / "dvs")
    first = data.load("cifar10-dvs", path=str(root), timesteps=3)
    real_to_frames, converted = events.to_frames, []
    monkeypatch.setattr(events, "to_frames", lambda *a, **k: converted.append(1) or real_to_frames(*a, **k))
    moved = root.rename(tmp_path / "moved")  # a moved folder keeps its frames
    again = data.load("cifar10-dvs", path=str(moved), timesteps=3)
    assert converted == [] and torch.equal(again.train.images, first.train.images)

    def read_only(path, *args, **kwargs):  # root ignores chmod, so the refusal is simulated
        raise PermissionError(13, "Read-only file system", str(path))

    with monkeypatch.context() as patch:  # frames converted beforehand, on a read-only mount
        patch.setattr(events, "open", read_only, raising=False)
        assert torch.equal(data.load("cifar10-dvs", path=str(moved), timesteps=3).train.images,
                           first.train.images)

    replaced = moved / "automobile" / "cifar10_automobile_9.aedat"  # a test recording
    t = np.arange(400) * 10
    events.write_aedat(replaced, t, np.full(400, 5), np.full(400, 7), np.ones(400, dtype=int))
    changed = data.load("cifar10-dvs", path=str(moved), timesteps=3)
    assert len(converted) == 20
    torch.testing.assert_close(changed.test.images[1].float(), events.to_frames(events.read_aedat(replaced), 3),
                               atol=1e-2, rtol=1e-2)
    assert torch.equal(changed.train.images, first.train.images)

    (moved / "airplane" / "cifar10_airplane_0.aedat").unlink()
    fewer = data.load("cifar10-dvs", path=str(moved), timesteps=3)
    assert len(fewer.train) + len(fewer.test) == 19
    assert sorted(p.name for p in moved.iterdir()) == [".mpdagl-frames-T3-48-spikingjelly-first90",
                                                       ".mpdagl-frames.lock", "airplane",
                                                       "automobile"]  # one copy, no scratch


CONVERT_COUNTING = """
import pathlib, sys, time
from mpdagl_triton import events
root, counts, ready, go = sys.argv[1:]
real = events.to_frames
def counted(*args, **kwargs):
    with open(counts, "a") as f:
        f.write("x")
    return real(*args, **kwargs)
events.to_frames = counted
pathlib.Path(ready).touch()
while not pathlib.Path(go).exists():
    time.sleep(0.01)
events.build_frames_dataset(root, 3)
"""


@pytest.mark.slow
def test_cifar10_dvs_processes_loading_at_once_convert_once(tmp_path):
    """torchrun's processes all load the dataset: one converts, the others wait and read it."""
    import subprocess
    import sys
    import time

    root = fake_dvs(tmp_path / "dvs")
    counts, go = tmp_path / "conversions", tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(2)]
    workers = [subprocess.Popen([sys.executable, "-c", CONVERT_COUNTING, str(root), str(counts), str(r), str(go)])
               for r in ready]
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()  # both start converting at once
    assert [w.wait(120) for w in workers] == [0, 0]
    assert counts.read_text() == "x" * 20  # 20 recordings, converted by one process


# -- augmentation and loading --------------------------------------------------------------------


def test_image_augmentation_per_sample_and_reproducible():
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    aug = ImageAugment(32, padding=4, autoaugment=True)
    torch.manual_seed(0)
    a = aug(images, torch.Generator().manual_seed(1))
    torch.manual_seed(123)  # every draw comes from the generator passed, none from the global one
    b = aug(images, torch.Generator().manual_seed(1))
    assert a.shape == (32, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and 0 <= a.min() and a.max() <= 1
    assert not torch.equal(a, images.float() / 255)


def test_crop_flip_is_a_padded_window_per_image_at_every_offset():
    """Each output is one of the (offset, flip) windows of its zero-padded image, and over many
    images every window occurs: uniform per image, not one per batch."""
    images = torch.randint(1, 256, (400, 2, 6, 7), dtype=torch.uint8)  # no zeros: padding shows
    out = random_crop_flip(images, 6, 2, torch.Generator().manual_seed(5))
    assert out.shape == (400, 2, 6, 6) and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))

    def window(image, top, left, flip):
        w = image[:, top:top + 6, left:left + 6]
        return w.flip(-1) if flip else w

    seen = set()
    for image, crop in zip(padded, out):
        windows = [(top, left, flip) for top in range(5) for left in range(6) for flip in (False, True)
                   if torch.equal(crop, window(image, top, left, flip))]
        assert len(windows) == 1
        seen.add(windows[0])
    assert len(seen) == 5 * 6 * 2
    with pytest.raises(ValueError, match="cannot crop 12x12 from 6x7 images padded by 2"):
        random_crop_flip(images, 12, 2, torch.Generator())


def test_crop_flip_costs_the_same_dispatches_for_any_batch():
    """The augmentation's cost on a GPU is per dispatched op: the crop and flip must not loop
    over images (slicing image by image costs ~3 per image) nor read anything back to the host."""
    counts = []
    for n in (4, 64):
        with Dispatches() as record:
            ImageAugment(8, 1, autoaugment=False)(torch.zeros(n, 3, 8, 8, dtype=torch.uint8),
                                                  torch.Generator().manual_seed(0))
        counts.append(len(record.ops))
        assert "_local_scalar_dense.default" not in record.ops and "nonzero.default" not in record.ops
    assert counts[0] == counts[1] < 40


def test_autoaugment_draws_a_subpolicy_per_image(monkeypatch):
    """Each image goes through the steps of the sub-policy the generator drew for it, and only
    those (the operations replaced by marks: step k of operation i adds (i + 1) / 100 + k / 1000)."""
    names = list(augment.MAGNITUDES)
    aug = ImageAugment(8, padding=0, autoaugment=True)
    step_of = {}

    def mark(name, images, magnitudes):
        return images + (names.index(name) + 1) / 100 * 255 + step_of[name] / 1000 * 255

    monkeypatch.setattr(augment, "apply_operation", mark)
    work = aug.steps(torch.zeros(60, 3, 8, 8, dtype=torch.uint8), torch.Generator().manual_seed(4))
    next(work)
    for k, name in aug.groups:
        step_of[name] = k
        try:
            next(work)
        except StopIteration as done:
            out = done.value
    # replay the draws: the sub-policies first, then the crops and flips, then the steps
    gen = torch.Generator().manual_seed(4)
    choice = torch.randint(25, (60,), generator=gen)
    random_crop_flip(torch.zeros(60, 3, 8, 8), 8, 0, gen)
    fires = torch.rand(60, 2, generator=gen, dtype=torch.float64)
    expected = torch.zeros(60)
    for i in range(60):
        for k, step in enumerate(augment.CIFAR10_POLICY[int(choice[i])]):
            if fires[i, k] < step.probability:
                expected[i] += (names.index(step.operation) + 1) / 100 + k / 1000
    assert len(choice.unique()) > 12 and (expected > 0).sum() > 30  # per image, not per batch
    torch.testing.assert_close(out, expected.view(60, 1, 1, 1).expand_as(out))


def test_event_augmentation_is_a_flip_and_a_roll():
    frames = torch.rand(6, 2, 2, 10, 12)
    out = EventAugment(5)(frames, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)  # replay the draws
    flips = torch.rand(6, generator=gen) < 0.5
    shifts = torch.randint(-5, 6, (2, 6), generator=gen)
    for b in range(6):
        x = frames[b].flip(-1) if flips[b] else frames[b]
        expected = torch.roll(x, shifts=(int(shifts[0, b]), int(shifts[1, b])), dims=(-2, -1))
        assert torch.equal(out[b], expected)


def test_cpu_loader_workers_give_the_same_batches():
    ds = data.load("digits")
    one = data.Loader(ds.train, ds, 64, torch.device("cpu"), train=True, workers=0)
    two = data.Loader(ds.train, ds, 64, torch.device("cpu"), train=True, workers=2)
    for (x1, y1), (x2, y2) in zip(one.epoch(7, 3), two.epoch(7, 3)):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert len(one) == len(ds.train) // 64


def test_processes_share_training_batches_and_deal_test_batches():
    """Under torchrun each process takes its slice of every global training batch (the same
    batches as one process) and whole test batches round robin, each image once, even when the
    batches do not divide evenly over the processes."""
    split = data.Split(torch.randint(0, 256, (50, 1, 4, 4), dtype=torch.uint8), torch.arange(50))
    ds = data.Dataset("fake", split, split, [str(i) for i in range(50)], (0.5,), (1.0,))
    alone = [labels for _, labels in data.Loader(split, ds, 8, torch.device("cpu"), train=True).epoch(1, 2)]
    shares = [[labels for _, labels in data.Loader(split, ds, 8, torch.device("cpu"), train=True, rank=r,
                                                   world=2).epoch(1, 2)] for r in range(2)]
    assert [torch.cat(pair).tolist() for pair in zip(*shares)] == [b.tolist() for b in alone]
    assert len(alone) == 6
    dealt = [data.Loader(split, ds, 8, torch.device("cpu"), train=False, rank=r, world=3) for r in range(3)]
    batches = [[labels for _, labels in loader.epoch(1, 0)] for loader in dealt]
    assert [len(b) for b in batches] == [len(loader) for loader in dealt] == [3, 2, 2]  # 7 batches
    assert sorted(torch.cat([torch.cat(b) for b in batches]).tolist()) == list(range(50))
    with pytest.raises(ValueError, match="does not split evenly over 3 processes"):
        data.Loader(split, ds, 8, torch.device("cpu"), train=True, rank=0, world=3)
    with pytest.raises(ValueError, match="the training split has 50 images, fewer than the global batch size 64"):
        data.Loader(split, ds, 64, torch.device("cpu"), train=True, rank=0, world=2)


def test_training_batches_are_augmented_several_at_a_time():
    """Augmentation runs on chunks of batches (its cost is per call on a GPU); the batches that
    come out are still the epoch's shuffled batches, in order, each augmented, every one full."""
    images = torch.randint(0, 256, (110, 3, 8, 8), dtype=torch.uint8)
    split = data.Split(images, torch.arange(110))
    ds = data.Dataset("fake", split, split, [str(i) for i in range(110)], (0.5,) * 3, (1.0,) * 3, "crop-flip")
    loader = data.Loader(split, ds, 10, torch.device("cpu"), train=True,
                         augment_chunk_elements=4 * 10 * 3 * 8 * 8)  # 4 batches of 10 a call
    calls = []
    steps = loader.augment.steps
    loader.augment.steps = lambda x, gen: calls.append(len(x)) or steps(x, gen)
    batches = list(loader.epoch(3, 1))
    assert calls == [40, 40, 30, 40] and len(batches) == len(loader) == 11  # 40: epoch 2's first chunk
    order = torch.randperm(110, generator=data.epoch_generator(3, 1))
    for i, (x, labels) in enumerate(batches):
        assert x.shape == (10, 3, 8, 8) and x.dtype == torch.float32
        assert torch.equal(labels, order[10 * i:10 * i + 10])
    torch.manual_seed(1)  # crop and flip draw from the epoch's generator only
    assert all(torch.equal(x, again) for (x, _), (again, _) in zip(batches, loader.epoch(3, 1)))
    assert not torch.equal(batches[0][0], images[order[:10]].float() / 255 - 0.5)  # augmented


@pytest.mark.slow
def test_the_next_chunk_is_augmented_between_the_batches_of_this_one():
    """One AutoAugment call is ~1,000 dispatches; on a GPU, issued at once behind queued steps,
    they fill CUDA's launch queue and the GPU idles for the rest of the call. The loader spreads
    the next chunk's augmentation over the current chunk's batches, a few pieces after each. The
    batches do not depend on what runs between them: every draw comes from the epoch's generator,
    whatever the training loop draws from torch's global generator meanwhile."""
    images = torch.randint(0, 256, (512, 3, 32, 32), dtype=torch.uint8)
    split = data.Split(images, torch.arange(512) % 10)
    ds = data.Dataset("fake", split, split, [str(i) for i in range(10)], data.CIFAR_MEAN, data.CIFAR_STD, "cifar")
    loader = data.Loader(split, ds, 64, torch.device("cpu"), train=True,
                         augment_chunk_elements=256 * 3 * 32 * 32)  # two chunks of four batches
    gaps, batches = [], iter(loader.epoch(0, 1))
    with Dispatches() as dispatched:
        while True:
            before = len(dispatched.ops)
            try:
                next(batches)
            except StopIteration:
                break
            gaps.append(len(dispatched.ops) - before)
    # the first batch waits for its whole chunk; the second chunk is done after batches 1-4
    assert len(gaps) == 8 and all(gap > 0 for gap in gaps[1:5]), gaps
    assert max(gaps[1:]) < gaps[0] / 2 < sum(gaps[1:5]), gaps
    plain = list(loader.epoch(0, 1))
    beside_steps = []
    for batch in loader.epoch(0, 1):
        beside_steps.append(batch)
        torch.rand(100)  # a training step drawing from the global generator
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(plain, beside_steps))
    assert not torch.equal(plain[4][0], list(loader.epoch(0, 2))[4][0])  # another epoch, other draws
    at_once = data.Loader(split, ds, 64, torch.device("cpu"), train=True, interleave=False,
                          augment_chunk_elements=256 * 3 * 32 * 32)  # the same batches, only later
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(plain, at_once.epoch(0, 1)))


def test_the_next_epochs_first_chunk_is_augmented_during_this_epochs_last():
    """An epoch's first batch waits for its whole chunk's augmentation (on the H100 host ~150 ms,
    the GPU idle) unless the loader started it during the previous epoch's last chunk; it does,
    and the batches are those of the epoch started afresh. Asking for another epoch than the next
    starts that one afresh."""
    images = torch.randint(0, 256, (512, 3, 32, 32), dtype=torch.uint8)
    split = data.Split(images, torch.arange(512) % 10)
    ds = data.Dataset("fake", split, split, [str(i) for i in range(10)], data.CIFAR_MEAN, data.CIFAR_STD, "cifar")

    def loader():
        return data.Loader(split, ds, 64, torch.device("cpu"), train=True, augment_chunk_elements=256 * 3 * 32 * 32)

    trained, fresh = loader(), loader()
    with Dispatches() as afresh:
        next(fresh.epoch(0, 2))
    for _ in trained.epoch(0, 1):
        pass
    with Dispatches() as ahead:
        second = trained.epoch(0, 2)
        first_batch = next(second)
    # not counted: the CPU loader's fetch of each image by index (a select and an item per index,
    # the same on both sides; on a GPU one gather), which would hide the augmentation's share
    fetch = ("select.int", "_local_scalar_dense.default")
    ahead_ops, afresh_ops = ([op for op in ops if op not in fetch] for ops in (ahead.ops, afresh.ops))
    assert len(ahead_ops) < len(afresh_ops) / 4, (len(ahead_ops), len(afresh_ops))
    expected = list(loader().epoch(0, 2))
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip([first_batch, *second], expected))
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(trained.epoch(0, 5), loader().epoch(0, 5)))


@pytest.mark.parametrize("augmentation", ["cifar", "crop-flip", "dvs"])
@pytest.mark.slow
def test_training_batches_never_wait_for_the_device(augmentation):
    """On a GPU a value read back from the device (`item`, `nonzero`, `bool`) or a blocking copy
    to it waits for every queued training step, so the host could not augment the next chunk
    while the GPU trains. Batches are prepared here on the meta device, which holds no values:
    any read-back raises. Every host-to-device copy must be non-blocking."""
    import sys

    class Copies(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.blocking, self.non_blocking = [], 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default):
                source, target = (args[0], kwargs.get("device")) if func is torch.ops.aten._to_copy.default \
                    else (args[1], args[0].device)
                if source.device.type == "cpu" and target is not None and torch.device(target).type == "meta":
                    frame, callers = sys._getframe(), []
                    while frame is not None:
                        callers.append(frame.f_code.co_name)
                        frame = frame.f_back
                    if kwargs.get("non_blocking", False) or (len(args) > 2 and args[2]):
                        self.non_blocking += 1
                    else:
                        self.blocking.append(callers[2:6])
            return func(*args, **kwargs)

    shape = (3, 2, 48, 48) if augmentation == "dvs" else (3, 32, 32)  # event frames: [T, C, H, W]
    images = torch.randint(0, 256, (300, *shape), dtype=torch.uint8)
    if augmentation == "dvs":
        images = images.half()
    split = data.Split(images, torch.arange(300) % 10)
    channels = shape[-3]
    ds = data.Dataset("fake", split, split, [str(i) for i in range(10)], (0.5,) * channels, (0.25,) * channels,
                      augmentation)
    loader = data.Loader(split, ds, 100, torch.device("meta"), train=True)
    with Copies() as copies:
        batches = list(loader.epoch(0, 1))
    assert [(x.shape, x.device.type, y.device.type) for x, y in batches] == [((100, *shape), "meta", "meta")] * 3
    # AutoAugment's among them: each (step, operation)'s images and parameters, ~45 per chunk
    assert copies.blocking == [] and copies.non_blocking > (25 if augmentation == "cifar" else 0)


@pytest.mark.parametrize("dataset", ["cifar10", "cifar10-dvs"])
def test_train_command_on_fake_data(tmp_path, capsys, dataset):
    root = fake_cifar(tmp_path / "src") if dataset == "cifar10" else fake_dvs(tmp_path / "src")
    argv = ["train", "--dataset", dataset, "--data-path", str(root), "--arch", "tiny", "-T", "2",
            "--epochs", "1", "--batch-size", "8", "--out", str(tmp_path / "run")]
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert "final test accuracy" in capsys.readouterr().out
