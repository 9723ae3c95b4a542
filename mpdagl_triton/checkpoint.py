"""Atomic, pickle-free files: safetensors for tensors, JSON for everything else.

Every write goes to a temporary file in the same folder, is flushed to disk, then renamed over
the target, so a crash at any moment leaves either the old or the new file, never a torn one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from mpdagl_triton.errors import InvalidInput


#: the files of a saved model: what ``load`` reads and ``push`` uploads
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
#: ``library`` in config.json: models of this library
LIBRARY = "mpdagl-triton"


class CheckpointError(InvalidInput):
    """A checkpoint is missing, corrupt, or does not match what it claims to hold."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes, previous: str | os.PathLike | None = None) -> None:
    """Replace ``path`` by ``data`` atomically; with ``previous``, the file it replaces moves
    there first, once ``data`` is safely on disk (a crash between the two renames leaves
    ``previous`` and no ``path``, never a torn file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems can't open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                 metadata: dict[str, str] | None = None, previous: str | os.PathLike | None = None) -> None:
    """Write ``tensors`` as safetensors, atomically (``previous``: see :func:`atomic_write_bytes`)."""
    plain = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    atomic_write_bytes(path, save_safetensors_bytes(plain, metadata=metadata), previous)


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file and its metadata; a missing, truncated or foreign file raises
    CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    data = path.read_bytes()
    _refuse_pickle(path, data)
    try:
        tensors = load_safetensors_bytes(data)
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, ValueError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file (corrupt or truncated?): {exc}") from exc
    return tensors, metadata


def _refuse_pickle(path: Path, data: bytes) -> None:
    # pickle protocol 2+ starts with 0x80; torch.save archives are zip files ("PK"); a safetensors
    # file starts with its header's length (8 bytes, little-endian: 0x80 first for some lengths)
    # and then the JSON header's "{"
    if data[8:9] == b"{" and 8 + int.from_bytes(data[:8], "little") <= len(data):
        return
    if data[:1] == b"\x80" or data[:2] == b"PK":
        raise CheckpointError(f"{path} looks like a pickle / torch.save file; only safetensors are loaded")


def read_json(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(obj).__name__}")
    return obj


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The complete JSON lines of a file (a torn last line, from a crash mid-append, is skipped);
    [] when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
