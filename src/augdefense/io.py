"""Atomic writes and safe loading of artifacts.

Every artifact is written to a temporary name in the same directory and renamed into place, so
a killed job never leaves a finished-looking file. Artifacts hold tensors and plain values only
and are loaded with ``weights_only=True``: a planted pickle is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from augdefense.errors import ArtifactError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


# sha256 by (path, size, mtime): a job hashes its inputs for the producer check, the checkpoint
# fingerprint and the sidecar; large prepared datasets are read once.
_DIGESTS: dict[tuple, str] = {}


def sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    import hashlib

    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(chunk):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None


def save_tensors(path: str | os.PathLike, obj: dict) -> None:
    """Save through a buffer: torch.save names the archive's records after the file, and the
    temporary name is random, so saving to the file directly would make equal objects differ."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load_tensors(path: str | os.PathLike, required: dict[str, type] | None = None) -> dict:
    """Load a tensor artifact safely and check that ``required`` keys are present with their types."""
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(
            f"{path}: refused to load: it holds more than tensors and plain values (weights_only load failed: {first})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: truncated or corrupted ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise ArtifactError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    for key, kind in (required or {}).items():
        if key not in obj:
            raise ArtifactError(f"{path}: missing entry '{key}'")
        if not isinstance(obj[key], kind):
            raise ArtifactError(f"{path}: entry '{key}' should be {kind.__name__}, found {type(obj[key]).__name__}")
    return obj
