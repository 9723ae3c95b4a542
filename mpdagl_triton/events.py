"""CIFAR10-DVS: AEDAT event files -> T count frames -> a ``datasets.Dataset`` on disk.

The original release (Li et al., 2017, figshare) is one folder per class, ``<root>/<class>/*.aedat``,
each file a jAER "AER-DAT2.0" recording of a DVS128 sensor:

    header   ASCII lines starting with '#' (the first is ``#!AER-DAT2.0``)
    events   pairs of big-endian uint32: address, timestamp (microseconds)
    address  bit 0 polarity, bits 1-7 x, bits 8-14 y (128 x 128 pixels)

Each recording becomes T frames of 2 x 128 x 128 event counts (channel 0 = ON events), rotated
upright (row = 127 - x, col = 127 - y: SpikingJelly's CIFAR10DVS orientation, the one common tools
use), area-resized to 48 x 48. Classes are the sorted folder names (alphabetical order is
CIFAR-10's label order).

Frame rules (how events are cut into T frames), :data:`FRAME_RULES`:

- ``spikingjelly`` (default): SpikingJelly's ``integrate_events_by_fixed_frames_number`` with
  ``split_by="number"``, as its ``CIFAR10DVS(frames_number=T, split_by="number")``. Events stay
  in file order; frame i takes events ``[i * (N // T), (i + 1) * (N // T))`` and the last frame
  also takes the ``N % T`` left over; with fewer events than frames (N < T) the first T - 1
  frames are empty and the last holds them all.
- ``even``: events sorted by timestamp (stably), frame i takes ``[N i // T, N (i + 1) // T)``, so
  frame sizes differ by at most one; a recording with fewer events than frames is refused.

Train/test splits (the release has none), :data:`SPLITS`; files within a class ordered by the
number at the end of their name unless said otherwise:

- ``first90`` (default): the first 90% of each class train (``int(0.9 n)``: files 0-899 of
  1000), the rest test (900-999).
- ``tebn``: the first 10% test (files 0-99), the rest train (100-999): the split of TEBN (Duan et
  al., NeurIPS 2022), implemented by SpikingJelly's ``CIFAR10DVSTEBNSplit`` and widely reused; its
  note warns that test accuracy on it is typically much higher than on other splits.
- ``spikingjelly``: SpikingJelly's ``split_to_train_test_set(0.9, CIFAR10DVS(...), 10)`` (no
  random split): the first ``ceil(0.9 n)`` files of each class in the dataset's order train.
  That order is torchvision's ``DatasetFolder``: file names sorted as strings (``_0, _1, _10,
  _100, _101, ...``), so of 1000 files the test set is 909, 91, 910-919, 92, ..., 99, 990-999.

Resizing: the MPD-AGL authors' loader (taken from TET) resizes each stored 128 x 128 frame with
torchvision's ``ToPILImage -> Resize((48, 48)) -> ToTensor``. On a float tensor ToPILImage casts
``255 * value`` to uint8, which wraps for counts (a count c in 1..255 becomes (256 - c) / 255,
about 1: a count frame turns into an event-presence map), then PIL resizes the two-channel "LA"
image bilinearly (antialiased) with the ON channel premultiplied by the OFF one. We area-resize
the counts themselves.

The converted frames are stored next to the recordings, one folder per (T, size, frame rule,
split), and reused while the recordings are unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from mpdagl_triton.errors import InvalidInput

SENSOR = 128
FRAME_SIZE = 48
FINGERPRINT_NAME = "recordings.sha256"  # in the converted dataset's folder: what it was made from
FRAME_RULES: tuple[str, ...] = ("spikingjelly", "even")
SPLITS: tuple[str, ...] = ("first90", "tebn", "spikingjelly")
DEFAULT_FRAME_RULE = "spikingjelly"
DEFAULT_SPLIT = "first90"


class EventFileError(InvalidInput):
    """An AEDAT file that cannot be parsed."""


def read_aedat(path: str | Path) -> dict[str, np.ndarray]:
    """Events of one AEDAT 2.0 DVS128 file: ``t`` (us), ``x``, ``y``, ``p`` (0/1) arrays."""
    data = Path(path).read_bytes()
    start = 0
    while start < len(data) and data[start:start + 1] == b"#":
        end = data.find(b"\n", start)
        if end < 0:
            raise EventFileError(f"{path}: header line without a newline")
        start = end + 1
    body = data[start:]
    if len(body) % 8:
        raise EventFileError(f"{path}: {len(body)} bytes of events is not a whole number of 8-byte events "
                             "(truncated file?)")
    words = np.frombuffer(body, dtype=">u4")
    address, timestamp = words[0::2], words[1::2]
    return {
        "t": timestamp.astype(np.int64),
        "x": ((address >> 1) & 0x7F).astype(np.int64),
        "y": ((address >> 8) & 0x7F).astype(np.int64),
        "p": (address & 1).astype(np.int64),
    }


def write_aedat(path: str | Path, t, x, y, p) -> None:
    """Write events in the same AEDAT 2.0 layout (used by the tests and to make small samples)."""
    address = (np.asarray(y, np.uint32) << 8) | (np.asarray(x, np.uint32) << 1) | np.asarray(p, np.uint32)
    words = np.empty(2 * len(address), dtype=">u4")
    words[0::2], words[1::2] = address, np.asarray(t, np.uint32)
    header = b"#!AER-DAT2.0\r\n# This is a raw AE data file - do not edit\r\n"
    Path(path).write_bytes(header + words.tobytes())


def _check(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InvalidInput(f"unknown CIFAR10-DVS {name} {value!r}; expected one of {', '.join(choices)}")


def frame_bounds(n: int, timesteps: int, rule: str = DEFAULT_FRAME_RULE) -> list[int]:
    """Event index bounds of the T frames: frame i holds events ``[b[i], b[i + 1])`` (in file
    order for ``spikingjelly``, in time order for ``even``)."""
    _check("frame rule", rule, FRAME_RULES)
    if rule == "even":
        if n < timesteps:
            raise EventFileError(f"{n} events cannot fill {timesteps} frames evenly; use the "
                                 "spikingjelly frame rule, which puts them all in the last frame")
        return [n * i // timesteps for i in range(timesteps + 1)]
    per_frame = n // timesteps
    return [per_frame * i for i in range(timesteps)] + [n]  # the last frame takes the remainder


def to_frames(events: dict[str, np.ndarray], timesteps: int, size: int = FRAME_SIZE,
              rule: str = DEFAULT_FRAME_RULE) -> torch.Tensor:
    """``[T, 2, size, size]`` float frames: event counts of T slices cut by ``rule``
    (:data:`FRAME_RULES`), area-resized."""
    n = len(events["t"])
    bounds = frame_bounds(n, timesteps, rule)
    # "even" cuts by time; "spikingjelly" takes the events in file order
    order = np.argsort(events["t"], kind="stable") if rule == "even" else slice(None)
    row = SENSOR - 1 - events["x"][order]
    col = SENSOR - 1 - events["y"][order]
    channel = 1 - events["p"][order]  # channel 0 = ON (polarity 1)
    frames = np.zeros((timesteps, 2 * SENSOR * SENSOR), dtype=np.float32)
    flat = (channel * SENSOR + row) * SENSOR + col
    for i in range(timesteps):
        frames[i] = np.bincount(flat[bounds[i]:bounds[i + 1]], minlength=2 * SENSOR * SENSOR)
    frames = torch.from_numpy(frames).reshape(timesteps, 2, SENSOR, SENSOR)
    if size != SENSOR:
        frames = F.interpolate(frames, size=(size, size), mode="area")
    return frames


def _numeric_key(path: Path) -> tuple:
    digits = re.findall(r"\d+", path.stem)
    return (int(digits[-1]) if digits else -1, path.name)


def train_mask(files: list[Path], split: str = DEFAULT_SPLIT) -> list[bool]:
    """Which of one class's recordings train under ``split`` (:data:`SPLITS`); ``files`` in
    numeric order (:func:`_numeric_key`)."""
    _check("split", split, SPLITS)
    n = len(files)
    if split == "spikingjelly":  # torchvision's DatasetFolder order: names sorted as strings
        by_name = sorted(range(n), key=lambda i: files[i].name)
        train = set(by_name[:math.ceil(n * 0.9)])
        return [i in train for i in range(n)]
    n_train = int(0.9 * n)
    if split == "tebn":
        return [i >= n - n_train for i in range(n)]
    return [i < n_train for i in range(n)]


def list_recordings(root: str | Path, split: str = DEFAULT_SPLIT
                    ) -> tuple[list[str], list[tuple[Path, int, bool]]]:
    """(class names, [(file, label, is_train)]) of a CIFAR10-DVS folder under ``split``."""
    _check("split", split, SPLITS)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"CIFAR10-DVS folder {root} does not exist; expected <root>/<class>/*.aedat")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise FileNotFoundError(f"{root} has no class folders; expected <root>/<class>/*.aedat")
    items = []
    for label, name in enumerate(classes):
        files = sorted((root / name).glob("*.aedat"), key=_numeric_key)
        if not files:
            raise FileNotFoundError(f"class folder {root / name} has no .aedat files")
        items += [(f, label, is_train) for f, is_train in zip(files, train_mask(files, split))]
    return classes, items


def recordings_fingerprint(root: Path, items: list[tuple[Path, int, bool]]) -> str:
    """A digest of what the conversion reads: each recording's path under ``root``, size,
    modification time, label and split. Moving the whole folder keeps it; adding, removing,
    replacing or renaming a recording changes it."""
    digest = hashlib.sha256()
    for path, label, is_train in items:
        stat = path.stat()
        digest.update(f"{path.relative_to(root).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\0"
                      f"{label}\0{is_train}\n".encode())
    return digest.hexdigest()


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Wait for, then hold, ``lock_path``: torchrun's processes all load the dataset, and one of
    them converts while the others wait and then read its result. No-op without ``fcntl``, or
    in a read-only folder (frames converted beforehand are read; nobody can convert there)."""
    try:
        import fcntl

        handle = open(lock_path, "a")
    except (ImportError, OSError):
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def frames_folder_name(timesteps: int, size: int = FRAME_SIZE, rule: str = DEFAULT_FRAME_RULE,
                       split: str = DEFAULT_SPLIT) -> str:
    """Where :func:`build_frames_dataset` keeps frames: every setting that changes them is in it."""
    return f".mpdagl-frames-T{timesteps}-{size}-{rule}-{split}"


def build_frames_dataset(root: str | Path, timesteps: int, size: int = FRAME_SIZE,
                         rule: str = DEFAULT_FRAME_RULE, split: str = DEFAULT_SPLIT):
    """The converted dataset (``frames`` float16 ``[T, 2, size, size]``, ``label``, ``train``),
    saved under ``<root>/`` :func:`frames_folder_name` and loaded from there while the
    recordings are unchanged (:func:`recordings_fingerprint`); converted again when they change."""
    import datasets

    _check("frame rule", rule, FRAME_RULES)
    root = Path(root)
    target = root / frames_folder_name(timesteps, size, rule, split)
    classes, items = list_recordings(root, split)
    fingerprint = recordings_fingerprint(root, items)
    with _exclusive(root / ".mpdagl-frames.lock"):
        stored = target / FINGERPRINT_NAME
        if stored.is_file() and stored.read_text().strip() == fingerprint:
            return datasets.load_from_disk(str(target))
        return _convert(classes, items, timesteps, size, rule, target, fingerprint)


def _convert(classes: list[str], items: list[tuple[Path, int, bool]], timesteps: int, size: int,
             rule: str, target: Path, fingerprint: str):
    import datasets

    root = target.parent

    def generate():
        for path, label, is_train in items:
            try:
                events = read_aedat(path)  # its errors name the file
                frames = to_frames(events, timesteps, size, rule)
            except EventFileError as exc:
                raise EventFileError(f"{path}: {exc}") if str(path) not in str(exc) else exc
            yield {"frames": frames.to(torch.float16).numpy(), "label": label, "train": is_train}

    features = datasets.Features({
        "frames": datasets.Array4D((timesteps, 2, size, size), "float16"),
        "label": datasets.ClassLabel(names=classes),
        "train": datasets.Value("bool"),
    })
    scratch = root / ".mpdagl-cache"
    shutil.rmtree(scratch, ignore_errors=True)  # a crashed conversion's cache knows no file times
    try:
        ds = datasets.Dataset.from_generator(generate, features=features, cache_dir=str(scratch))
    except datasets.exceptions.DatasetGenerationError as exc:
        # datasets wraps what the generator raised; a bad recording is the user's to fix: its own line
        cause = exc.__cause__
        if isinstance(cause, EventFileError):
            raise cause from None
        raise
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    ds.save_to_disk(str(tmp))
    (tmp / FINGERPRINT_NAME).write_text(fingerprint + "\n")
    shutil.rmtree(target, ignore_errors=True)  # frames of other recordings, or of an older version
    tmp.rename(target)  # a crash mid-conversion never leaves a partial dataset behind
    del ds
    shutil.rmtree(scratch, ignore_errors=True)
    return datasets.load_from_disk(str(target))
