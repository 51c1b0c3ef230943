"""Checkpoints: the whole student module in safetensors plus everything needed to resume exactly.

Layout: ``<run>/checkpoints/step_00001000/`` with ``student.safetensors`` (encoder, projection and fusion heads,
scales), ``train_state.pt`` (optimizer, scheduler, grad scaler, step, data position, RNG states, counters) and
``config.yaml`` (the resolved run config). A checkpoint is written into a temporary folder, fsynced, then renamed
into place, so a crash never leaves a half-written checkpoint under a real name. The last K are kept.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors.torch import load_file, save_file

STUDENT_FILE = "student.safetensors"
STATE_FILE = "train_state.pt"
CONFIG_FILE = "config.yaml"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_dir(run_dir: Union[str, Path]) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Union[str, Path]) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: Path, write) -> None:
    write(path)
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def save_checkpoint(run_dir: Union[str, Path], step: int, student: torch.nn.Module, state: dict[str, Any],
                    config_yaml: str, keep_last: int) -> Path:
    """Atomically write checkpoint ``step`` and prune all but the newest ``keep_last``."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors = {k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()}
    _write(tmp / STUDENT_FILE, lambda p: save_file(tensors, str(p), metadata={"format": "clipkd-student"}))
    _write(tmp / STATE_FILE, lambda p: torch.save(state, p))
    _write(tmp / CONFIG_FILE, lambda p: p.write_text(config_yaml))
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def resolve_resume(resume: str, run_dir: Union[str, Path]) -> Optional[Path]:
    """``latest`` -> the newest checkpoint of ``run_dir`` (None if there is none); else a checkpoint folder."""
    if resume == "latest":
        found = list_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STUDENT_FILE).is_file() or not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"not a clipkd checkpoint folder: {path} (needs {STUDENT_FILE} and {STATE_FILE})")
    return path


def load_checkpoint(path: Path, student: torch.nn.Module) -> dict[str, Any]:
    """Load the student's weights (strict) and return the training state."""
    missing, unexpected = student.load_state_dict(load_file(str(path / STUDENT_FILE)), strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: student does not match (missing {missing[:5]}, unexpected {unexpected[:5]}); "
                         "was it written with another student model or recipe?")
    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
