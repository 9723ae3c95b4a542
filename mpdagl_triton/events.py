"""CIFAR10-DVS: AEDAT event files -> T equal-count frames -> a ``datasets.Dataset`` on disk.

The original release (Li et al., 2017, figshare) is one folder per class, ``<root>/<class>/*.aedat``,
each file a jAER "AER-DAT2.0" recording of a DVS128 sensor:

    header   ASCII lines starting with '#' (the first is ``#!AER-DAT2.0``)
    events   pairs of big-endian uint32: address, timestamp (microseconds)
    address  bit 0 polarity, bits 1-7 x, bits 8-14 y (128 x 128 pixels)

Each recording is cut into T slices with equal event counts; each slice becomes a 2 x 128 x 128
count frame (channel 0 = ON events), rotated upright (row = 127 - x, col = 127 - y, the
orientation common tools use), and area-resized to 48 x 48. Classes are the sorted folder names
(alphabetical order is CIFAR-10's label order); within a class files are sorted by their numeric
suffix and the first 90% train, the rest test. The converted frames are stored next to the
recordings and reused while the recordings are unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
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


def to_frames(events: dict[str, np.ndarray], timesteps: int, size: int = FRAME_SIZE) -> torch.Tensor:
    """``[T, 2, size, size]`` float frames: event counts of T equal-count slices, area-resized."""
    n = len(events["t"])
    if n < timesteps:
        raise EventFileError(f"{n} events cannot fill {timesteps} frames")
    order = np.argsort(events["t"], kind="stable")
    row = SENSOR - 1 - events["x"][order]
    col = SENSOR - 1 - events["y"][order]
    channel = 1 - events["p"][order]  # channel 0 = ON (polarity 1)
    frames = np.zeros((timesteps, 2 * SENSOR * SENSOR), dtype=np.float32)
    bounds = [n * i // timesteps for i in range(timesteps + 1)]
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


def list_recordings(root: str | Path) -> tuple[list[str], list[tuple[Path, int, bool]]]:
    """(class names, [(file, label, is_train)]) of a CIFAR10-DVS folder."""
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
        n_train = int(0.9 * len(files))
        items += [(f, label, i < n_train) for i, f in enumerate(files)]
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


def build_frames_dataset(root: str | Path, timesteps: int, size: int = FRAME_SIZE):
    """The converted dataset (``frames`` float16 ``[T, 2, size, size]``, ``label``, ``train``),
    saved under ``<root>/.mpdagl-frames-T{T}-{size}`` and loaded from there while the recordings
    are unchanged (:func:`recordings_fingerprint`); converted again when they change."""
    import datasets

    root = Path(root)
    target = root / f".mpdagl-frames-T{timesteps}-{size}"
    classes, items = list_recordings(root)
    fingerprint = recordings_fingerprint(root, items)
    with _exclusive(root / ".mpdagl-frames.lock"):
        stored = target / FINGERPRINT_NAME
        if stored.is_file() and stored.read_text().strip() == fingerprint:
            return datasets.load_from_disk(str(target))
        return _convert(classes, items, timesteps, size, target, fingerprint)


def _convert(classes: list[str], items: list[tuple[Path, int, bool]], timesteps: int, size: int,
             target: Path, fingerprint: str):
    import datasets

    root = target.parent

    def generate():
        for path, label, is_train in items:
            try:
                frames = to_frames(read_aedat(path), timesteps, size)
            except EventFileError as exc:
                raise EventFileError(f"{path}: {exc}") from exc
            yield {"frames": frames.to(torch.float16).numpy(), "label": label, "train": is_train}

    features = datasets.Features({
        "frames": datasets.Array4D((timesteps, 2, size, size), "float16"),
        "label": datasets.ClassLabel(names=classes),
        "train": datasets.Value("bool"),
    })
    scratch = root / ".mpdagl-cache"
    shutil.rmtree(scratch, ignore_errors=True)  # a crashed conversion's cache knows no file times
    ds = datasets.Dataset.from_generator(generate, features=features, cache_dir=str(scratch))
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    ds.save_to_disk(str(tmp))
    (tmp / FINGERPRINT_NAME).write_text(fingerprint + "\n")
    shutil.rmtree(target, ignore_errors=True)  # frames of other recordings, or of an older version
    tmp.rename(target)  # a crash mid-conversion never leaves a partial dataset behind
    del ds
    shutil.rmtree(scratch, ignore_errors=True)
    return datasets.load_from_disk(str(target))
