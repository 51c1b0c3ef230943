"""Checkpoints: the whole student module in safetensors plus everything needed to resume exactly.

Layout: ``<run>/checkpoints/step_00001000/`` with ``student.safetensors`` (encoder, projection and fusion heads,
scales), ``train_state.pt`` (optimizer, scheduler, grad scaler, step, data position, RNG states, counters:
tensors and plain Python values only, so it loads with ``torch.load(weights_only=True)``), ``config.yaml`` (the
resolved run config) and ``checksums.json`` (SHA-256 and size of each of those files).

Safety rules:

* nothing is ever unpickled beyond tensors and plain values: a state file that needs arbitrary unpickling is
  refused with :class:`UnsafeCheckpointError`, and its code never runs;
* a checkpoint is written into a temporary folder, fsynced, then renamed into place; replacing a folder of the
  same step first renames the old one aside, so the old or the new one is on disk at every moment; left-overs of
  a crash are cleaned (or restored) by :func:`clean_leftovers`;
* pruning keeps the newest ``keep_last`` checkpoints and never the one just written;
* a checkpoint whose files do not match their checksums is refused naming the file (:class:`CorruptCheckpointError`);
  ``latest`` falls back to the newest intact checkpoint with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import time
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors.torch import load_file, save_file

from clipkd.files import fsync_dir, sha256_file

log = logging.getLogger(__name__)

STUDENT_FILE = "student.safetensors"
STATE_FILE = "train_state.pt"
CONFIG_FILE = "config.yaml"
CHECKSUM_FILE = "checksums.json"
PAYLOAD = (STUDENT_FILE, STATE_FILE, CONFIG_FILE)
_STEP_DIR = re.compile(r"^step_(\d+)$")
_TMP_PREFIX, _OLD_PREFIX = ".tmp-", ".old-"
ABANDONED_DIR = "abandoned"


class CorruptCheckpointError(ValueError):
    """A checkpoint file is missing, truncated or altered."""


class UnsafeCheckpointError(ValueError):
    """A state file that would need arbitrary unpickling (code execution) to load."""


def checkpoint_dir(run_dir: Union[str, Path]) -> Path:
    return Path(run_dir) / "checkpoints"


def step_of(path: Path) -> int:
    """The step number of a ``step_XXXXXXXX`` folder."""
    m = _STEP_DIR.match(path.name)
    if not m:
        raise ValueError(f"not a checkpoint folder name: {path.name}")
    return int(m.group(1))


def list_checkpoints(run_dir: Union[str, Path]) -> list[Path]:
    """Checkpoint folders of a run, oldest (lowest step) first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [(step_of(p), p) for p in root.iterdir() if _STEP_DIR.match(p.name) and p.is_dir()]
    return [p for _, p in sorted(found)]


def _write(path: Path, write) -> None:
    write(path)
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _write_payload(folder: Path, student: torch.nn.Module, state: dict[str, Any], config_yaml: str) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()}
    _write(folder / STUDENT_FILE, lambda p: save_file(tensors, str(p), metadata={"format": "clipkd-student"}))
    _write(folder / STATE_FILE, lambda p: torch.save(state, p))
    _write(folder / CONFIG_FILE, lambda p: p.write_text(config_yaml))
    sums = {name: {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size} for name in PAYLOAD}
    _write(folder / CHECKSUM_FILE, lambda p: p.write_text(json.dumps(sums, indent=1)))
    fsync_dir(folder)


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` is renamed aside first and removed after."""
    old = None
    if final.exists():
        old = final.with_name(f"{_OLD_PREFIX}{final.name}-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(run_dir: Union[str, Path], step: int, student: torch.nn.Module, state: dict[str, Any],
                    config_yaml: str, keep_last: int) -> Path:
    """Atomically write checkpoint ``step`` and prune the oldest beyond ``keep_last`` (never this one)."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f"{_TMP_PREFIX}{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    _write_payload(tmp, student, state, config_yaml)
    _move_into_place(tmp, final)
    others = [p for p in list_checkpoints(run_dir) if p != final]
    for old in others[:max(0, len(others) + 1 - keep_last)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def clean_leftovers(run_dir: Union[str, Path]) -> list[str]:
    """Remove temporary folders of an interrupted write; restore a folder renamed aside whose replacement never
    arrived. Returns what was done, for the log."""
    root = checkpoint_dir(run_dir)
    done: list[str] = []
    if not root.is_dir():
        return done
    for p in sorted(root.iterdir()):
        if p.name.startswith(_OLD_PREFIX):
            original = root / p.name[len(_OLD_PREFIX):].rsplit("-", 1)[0]
            if original.exists():
                shutil.rmtree(p, ignore_errors=True)
                done.append(f"removed {p.name}")
            else:
                os.replace(p, original)
                done.append(f"restored {original.name}")
    for p in sorted(root.iterdir()):
        if p.name.startswith(_TMP_PREFIX):
            shutil.rmtree(p, ignore_errors=True)
            done.append(f"removed {p.name}")
    return done


def abandon_after(run_dir: Union[str, Path], step: int) -> list[Path]:
    """Move the checkpoints newer than ``step`` to ``checkpoints/abandoned/<time>/`` (a resume from an older
    checkpoint makes them history, so ``latest`` must never jump back to them). Returns their new places."""
    newer = [p for p in list_checkpoints(run_dir) if step_of(p) > step]
    if not newer:
        return []
    dest = checkpoint_dir(run_dir) / ABANDONED_DIR / time.strftime("%Y%m%d-%H%M%S")
    dest.mkdir(parents=True, exist_ok=True)
    moved = []
    for p in newer:
        os.replace(p, dest / p.name)
        moved.append(dest / p.name)
    return moved


def verify_checkpoint(path: Path) -> None:
    """Check every file of checkpoint ``path`` against ``checksums.json``; raise naming the first bad file."""
    sums_path = path / CHECKSUM_FILE
    if not sums_path.is_file():
        raise CorruptCheckpointError(f"{sums_path}: missing (an incomplete checkpoint, or one written before "
                                     "checksums were recorded)")
    try:
        sums = json.loads(sums_path.read_text())
    except ValueError:
        raise CorruptCheckpointError(f"{sums_path}: not valid JSON") from None
    for name in PAYLOAD:
        file = path / name
        expected = sums.get(name) or {}
        if not file.is_file():
            raise CorruptCheckpointError(f"{file}: missing")
        if file.stat().st_size != expected.get("bytes") or sha256_file(file) != expected.get("sha256"):
            raise CorruptCheckpointError(f"{file}: does not match its recorded checksum (truncated or altered)")


def _is_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / STUDENT_FILE).is_file() and (path / STATE_FILE).is_file()


def resolve_resume(resume: str, run_dir: Union[str, Path]) -> Optional[Path]:
    """``latest`` -> the newest intact checkpoint of ``run_dir`` (None if there is none; a corrupt newer one is
    skipped with a warning); else a checkpoint folder, which must be intact."""
    if resume == "latest":
        for path in reversed(list_checkpoints(run_dir)):
            try:
                verify_checkpoint(path)
                return path
            except CorruptCheckpointError as exc:
                log.warning("skipping corrupt checkpoint: %s", exc)
        return None
    path = Path(resume)
    if not _is_checkpoint(path):
        raise FileNotFoundError(f"not a clipkd checkpoint folder: {path} (needs {STUDENT_FILE} and {STATE_FILE})")
    verify_checkpoint(path)
    return path


def load_state(path: Path) -> dict[str, Any]:
    """The training state of checkpoint ``path``, loaded without arbitrary unpickling."""
    try:
        return torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"{path / STATE_FILE}: refused: it holds objects that only arbitrary unpickling could load, which "
            f"could run code from the file (clipkd writes tensors and plain values only). Detail: "
            f"{str(exc).splitlines()[0]}") from None


def load_student(path: Path, student: torch.nn.Module) -> None:
    """Load checkpoint ``path``'s student weights into ``student`` (strict, with a clear message)."""
    missing, unexpected = student.load_state_dict(load_file(str(path / STUDENT_FILE)), strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: student does not match (missing {missing[:5]}, unexpected {unexpected[:5]}); "
                         "was it written with another student model or recipe?")



def read_config(path: Path) -> dict[str, Any]:
    """The run config saved inside checkpoint ``path`` (a plain dict)."""
    import yaml

    return yaml.safe_load((path / CONFIG_FILE).read_text()) or {}
