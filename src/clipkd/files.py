"""Atomic file writes (temporary file, fsync, rename, fsync of the folder) and file digests."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


TMP_PREFIX = ".tmp-"


def remove_leftovers(folder: Path) -> list[Path]:
    """Delete the temporary files of interrupted writes in ``folder`` (only while nobody writes there)."""
    found = sorted(folder.glob(TMP_PREFIX + "*")) if folder.is_dir() else []
    for path in found:
        path.unlink(missing_ok=True)
    return found


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the whole new one, never a part."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_file_atomic(path: Path, write: Callable[[Path], Any]) -> Path:
    """Atomic version of a library's ``write(path)`` (safetensors, ONNX, ...): it writes a temporary file, which is
    fsynced and renamed to ``path``. Returns ``path``."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def move_folder_aside(path: Path) -> Path:
    """Rename ``path`` to ``<name>.replaced-<time>`` beside it (``-<n>`` added while that is taken): kept, never
    deleted. Returns the new place."""
    import time

    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest, n = path.with_name(f"{path.name}.replaced-{stamp}"), 1
    while dest.exists():
        dest, n = path.with_name(f"{path.name}.replaced-{stamp}-{n}"), n + 1
    os.replace(path, dest)
    return dest


def json_bytes(obj: Any) -> bytes:
    """Deterministic JSON (sorted keys, indented): equal objects give equal bytes."""
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode("utf-8")


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json_bytes(obj))


def read_json(path: Path) -> Any:
    """A JSON file, or ``ValueError`` naming it when it does not parse."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def quick_digest(path: Path, span: int = 1 << 16) -> str:
    """SHA-256 of a file's size, first and last ``span`` bytes: a cheap check that a large file is unchanged."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(span))
        f.seek(max(0, size - span))
        h.update(f.read(span))
    return h.hexdigest()
