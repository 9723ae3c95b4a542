"""CIFAR10-DVS frames and splits: our frame rules against an integrator written here from the
rules' definitions, against SpikingJelly's own functions where it is installed, and the splits.

SpikingJelly's dataset modules import torchvision at load time, which this project does not
install; its frame and split functions need only numpy and math, so they are taken from the
installed package's source files (parsed, and only those definitions run).
"""

import ast
import importlib.util
import math
import os
import typing
from pathlib import Path

import numpy as np
import pytest
import torch

from support.fake_data import fake_dvs
from mpdagl_triton import data, events
from mpdagl_triton.errors import InvalidInput
from mpdagl_triton.train import TrainConfig, validate

SENSOR = 128


def integrate(t, x, y, p, T: int, rule: str) -> np.ndarray:
    """Frames [T, 2, 128, 128] event by event, from the rules as the events module states them."""
    n = len(t)
    order = sorted(range(n), key=lambda k: (t[k], k)) if rule == "even" else list(range(n))
    frames = np.zeros((T, 2, SENSOR, SENSOR))
    for rank, k in enumerate(order):
        if rule == "even":  # frame i holds ranks [floor(n i / T), floor(n (i + 1) / T))
            i = next(i for i in range(T) if n * i // T <= rank < n * (i + 1) // T)
        else:  # N // T per frame, the remainder (or everything, when N < T) in the last
            i = T - 1 if n // T == 0 else min(rank // (n // T), T - 1)
        frames[i, 1 - p[k], SENSOR - 1 - x[k], SENSOR - 1 - y[k]] += 1  # ON -> 0, upright
    return frames


def random_events(rng: np.random.Generator, n: int, ordered: bool = False) -> dict:
    t = rng.integers(0, 1_000_000, n)
    return {"t": np.sort(t) if ordered else t, "x": rng.integers(0, SENSOR, n),
            "y": rng.integers(0, SENSOR, n), "p": rng.integers(0, 2, n)}


CASES = [  # (events, T): uneven counts, unordered time, fewer events than frames, none
    (997, 10), (1000, 10), (53, 7), (11, 10), (9, 10), (3, 10), (1, 4), (0, 3), (5, 1),
]


@pytest.mark.parametrize("n, T", CASES)
@pytest.mark.parametrize("rule", events.FRAME_RULES)
def test_frames_match_an_independent_integrator(n, T, rule):
    rng = np.random.default_rng([n, T, int.from_bytes(os.urandom(4), "little")])
    ev = random_events(rng, n)
    if rule == "even" and n < T:
        with pytest.raises(events.EventFileError, match=f"{n} events cannot fill {T} frames"):
            events.to_frames(ev, T, size=SENSOR, rule=rule)
        return
    got = events.to_frames(ev, T, size=SENSOR, rule=rule)
    want = integrate(ev["t"], ev["x"], ev["y"], ev["p"], T, rule)
    assert np.array_equal(got.numpy(), want)
    assert got.sum().item() == n


def test_spikingjelly_rule_keeps_file_order_and_puts_leftovers_last():
    # timestamps run backwards: by time the first frame would hold the last three events
    ev = {"t": np.arange(7)[::-1].copy(), "x": np.arange(7), "y": np.zeros(7, int), "p": np.ones(7, int)}
    frames = events.to_frames(ev, 2, size=SENSOR)  # 7 // 2 = 3 events, then 3 + 1 left over
    assert frames[0].sum() == 3 and frames[1].sum() == 4
    assert [frames[0, 0, SENSOR - 1 - k, SENSOR - 1].item() for k in range(3)] == [1, 1, 1]  # file order
    even = events.to_frames(ev, 2, size=SENSOR, rule="even")  # by time: events 6, 5, 4 first
    assert even[0].sum() == 3 and even[0, 0, SENSOR - 1 - 6, SENSOR - 1] == 1
    tiny = events.to_frames({k: v[:2] for k, v in ev.items()}, 4, size=SENSOR)
    assert [f.sum().item() for f in tiny] == [0, 0, 0, 2]


def test_unknown_rule_or_split_is_one_clear_line(tmp_path):
    with pytest.raises(InvalidInput, match="unknown CIFAR10-DVS frame rule 'time'; expected one of spikingjelly, even"):
        events.to_frames(random_events(np.random.default_rng(0), 10), 2, rule="time")
    with pytest.raises(InvalidInput, match="unknown CIFAR10-DVS split 'random'; expected one of first90, tebn, spikingjelly"):
        data.load("cifar10-dvs", path=str(fake_dvs(tmp_path / "dvs")), timesteps=2, dvs_split="random")
    with pytest.raises(ValueError, match="unknown dvs_split 'random'"):
        validate(TrainConfig(dvs_split="random"))


def numbers(mask: list[bool], train: bool) -> list[int]:
    return [i for i, m in enumerate(mask) if m == train]


def test_splits_by_file_number_and_by_name():
    files = [Path(f"cifar10_airplane_{i}.aedat") for i in range(1000)]
    assert numbers(events.train_mask(files, "first90"), False) == list(range(900, 1000))
    assert numbers(events.train_mask(files, "tebn"), False) == list(range(100))
    sj_test = numbers(events.train_mask(files, "spikingjelly"), False)
    # names sorted as strings end ... 908, 909, 91, 910, ..., 919, 92, ..., 99, 990, ..., 999
    want = [909] + [k for d in range(1, 10) for k in [90 + d] + list(range(900 + 10 * d, 910 + 10 * d))]
    assert sj_test == sorted(want) and len(sj_test) == 100
    assert 90 not in sj_test and 900 not in sj_test and 99 in sj_test


def test_the_split_and_frame_rule_select_their_own_cached_frames(tmp_path):
    root = fake_dvs(tmp_path / "dvs")  # 10 files per class
    default = data.load("cifar10-dvs", path=str(root), timesteps=3)
    tebn = data.load("cifar10-dvs", path=str(root), timesteps=3, dvs_split="tebn")
    assert len(tebn.test) == 2 and tebn.test.labels.tolist() == [0, 1]
    first = events.to_frames(events.read_aedat(root / "airplane" / "cifar10_airplane_0.aedat"), 3)
    torch.testing.assert_close(tebn.test.images[0].float(), first, atol=1e-2, rtol=1e-2)  # float16
    assert not torch.equal(tebn.test.images, default.test.images)
    even = data.load("cifar10-dvs", path=str(root), timesteps=3, dvs_frames="even")
    recording = events.read_aedat(root / "automobile" / "cifar10_automobile_9.aedat")
    torch.testing.assert_close(even.test.images[1].float(), events.to_frames(recording, 3, rule="even"),
                               atol=1e-2, rtol=1e-2)
    assert sorted(p.name for p in root.glob(".mpdagl-frames-*")) == [
        ".mpdagl-frames-T3-48-even-first90", ".mpdagl-frames-T3-48-spikingjelly-first90",
        ".mpdagl-frames-T3-48-spikingjelly-tebn"]
    again = data.load("cifar10-dvs", path=str(root), timesteps=3)  # the first one, not overwritten
    assert torch.equal(again.train.images, default.train.images)


# -- SpikingJelly's own functions ------------------------------------------------------------------


def spikingjelly_source(module: str, names: set[str]) -> dict:
    """The named functions (and module constants) of ``spikingjelly.datasets.<module>``, run
    from the installed source without its imports. Fails in CI when SpikingJelly is missing."""
    spec = importlib.util.find_spec("spikingjelly")
    if spec is None:
        if os.environ.get("CI"):
            pytest.fail("spikingjelly is not installed; .ci/run installs it for this test")
        pytest.skip("spikingjelly is not installed")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / f"{module}.py"
    tree = ast.parse(path.read_text())
    keep = [node for node in tree.body
            if (isinstance(node, ast.FunctionDef) and node.name in names)
            or (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant))]  # bit masks
    namespace = {"np": np, "math": math, "torch": torch, "Path": Path, **vars(typing)}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(path), "exec"), namespace)
    missing = names - set(namespace)
    assert not missing, f"spikingjelly {module}.py no longer defines {missing}"
    return namespace


@pytest.fixture(scope="module")
def sj():
    frames = spikingjelly_source("utils", {"cal_fixed_frames_number_segment_index",
                                           "integrate_events_segment_to_frame",
                                           "integrate_events_by_fixed_frames_number",
                                           "_split_class_indices"})
    reader = spikingjelly_source("cifar10_dvs", {"_read_bits", "_skip_header", "_load_raw_events",
                                                 "_parse_raw_address", "_load_events", "_load_origin_data"})
    return {**frames, "_load_origin_data": reader["_load_origin_data"]}


@pytest.mark.parametrize("n, T", CASES)
def test_frames_equal_spikingjellys_on_the_same_file(sj, tmp_path, n, T):
    rng = np.random.default_rng([n, T, int.from_bytes(os.urandom(4), "little")])
    ev = random_events(rng, n)
    path = tmp_path / "r.aedat"
    events.write_aedat(path, ev["t"], ev["x"], ev["y"], ev["p"])
    theirs = sj["integrate_events_by_fixed_frames_number"](sj["_load_origin_data"](path), "number", T,
                                                           SENSOR, SENSOR)
    ours = events.to_frames(events.read_aedat(path), T, size=SENSOR)
    assert np.array_equal(ours.numpy(), theirs)


def test_spikingjelly_split_equals_split_to_train_test_set(sj):
    """SpikingJelly's per-class split (random_split=False) on a class of files in the order
    torchvision's DatasetFolder lists them (names sorted as strings)."""
    for n in (1000, 10, 37):
        files = [Path(f"cifar10_cat_{i}.aedat") for i in range(n)]
        listed = sorted(range(n), key=lambda i: f"cifar10_cat_{i}.npz")  # its frame files
        train, test = sj["_split_class_indices"]([list(range(n))], 0.9, False)
        mask = events.train_mask(files, "spikingjelly")
        assert sorted(listed[i] for i in train) == numbers(mask, True)
        assert sorted(listed[i] for i in test) == numbers(mask, False)


def test_a_truncated_recording_is_one_line_naming_the_file(tmp_path, capsys):
    from mpdagl_triton import cli
    from support.fake_data import fake_dvs

    root = fake_dvs(tmp_path / "dvs", files_per_class=3)
    broken = root / "airplane" / "cifar10_airplane_1.aedat"
    broken.write_bytes(broken.read_bytes()[:-3])
    argv = ["train", "--dataset", "cifar10-dvs", "--data-path", str(root), "--arch", "tiny", "-T", "2",
            "--epochs", "1", "--out", str(tmp_path / "run"), "--device", "cpu"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{broken}: " in err and "not a whole number of 8-byte events (truncated file?)" in err
    assert err.count(str(broken)) == 1
    assert not (tmp_path / "run").exists()


def test_the_frame_rule_and_split_are_options_of_the_run(tmp_path):
    """--dvs-frames and --dvs-split reach the conversion: each run reads frames of its own rule."""
    from mpdagl_triton import cli
    from support.fake_data import fake_dvs

    root = fake_dvs(tmp_path / "dvs", files_per_class=10)
    base = ["train", "--dataset", "cifar10-dvs", "--data-path", str(root), "--arch", "tiny", "-T", "2",
            "--epochs", "1", "--batch-size", "4", "--device", "cpu"]
    assert cli.main([*base, "--out", str(tmp_path / "a")]) == 0
    assert cli.main([*base, "--dvs-frames", "even", "--dvs-split", "tebn", "--out", str(tmp_path / "b")]) == 0
    assert {p.name for p in root.glob(".mpdagl-frames-*")} >= {".mpdagl-frames-T2-48-spikingjelly-first90",
                                                               ".mpdagl-frames-T2-48-even-tebn"}
