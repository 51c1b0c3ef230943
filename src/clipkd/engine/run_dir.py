"""The run folder: refuse to mix two runs in one folder, move an old run aside on request, and keep the log
consistent with the checkpoint a run resumes from. Rank 0 alone calls the functions that change the folder.

A folder *holds a run* once a step of it was trained: it holds a checkpoint (even ``step_00000000``, which a run
stopped by a signal before its first step writes), or ``metrics.jsonl`` holds a row with ``step >= 1`` (a logged
training step; rows are logged at the step just trained, so a row of step 0, e.g. a skipped non-finite step, is
none). The files of an attempt that trained no step (``config.yaml``, ``inputs.json``, an empty or step-0
``metrics.jsonl``, TensorBoard event files: a run stopped by a check at its first batch) are not a run: a new run
in that folder replaces them (:func:`clear_untrained`), without ``--resume`` or ``--overwrite``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import IO, Optional, Union

from clipkd.engine import checkpoint as ckpt
from clipkd.engine.checkpoint import list_checkpoints
from clipkd.errors import ConfigError
from clipkd.files import move_folder_aside

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _row_step(line: str) -> Optional[int]:
    """The step of a ``metrics.jsonl`` line; None for a line torn by a kill during its write."""
    try:
        step = json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return None
    return step if isinstance(step, (int, float)) else None


def logged_a_step(run_dir: Union[str, Path]) -> bool:
    """Whether ``metrics.jsonl`` holds a row of a trained step (``step >= 1``); read up to the first one."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return False
    with path.open(encoding="utf-8") as f:
        return any((_row_step(line) or 0) >= 1 for line in f if line.strip())


def holds_run(run_dir: Union[str, Path]) -> bool:
    """True when ``run_dir`` holds a run that trained a step: a checkpoint, or a logged step >= 1."""
    return bool(list_checkpoints(run_dir)) or logged_a_step(run_dir)


def clear_untrained(run_dir: Union[str, Path]) -> list[Path]:
    """Rank 0, before a new run starts in ``run_dir``: when it holds no run, delete the log of an earlier attempt
    that trained no step (``metrics.jsonl``, TensorBoard event files), so the new run's log is its own; the
    deleted paths (none in a folder holding a run). ``config.yaml`` and ``inputs.json`` are rewritten by the run."""
    run_dir = Path(run_dir)
    if holds_run(run_dir):
        return []
    found = [p for p in [run_dir / METRICS_FILE] if p.is_file()]
    tb = run_dir / TENSORBOARD_DIR
    found += sorted(tb.glob("events.out.tfevents.*")) if tb.is_dir() else []
    for path in found:
        path.unlink()
    return found


def check_run_dir(run_dir: Union[str, Path], resume: Optional[str], overwrite: bool) -> None:
    """Refuse to start a new run in a folder that holds another one (unless ``resume`` or ``overwrite``)."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other: resume continues the run in run_dir, "
                          "--overwrite moves it aside and starts a new one")
    if resume or overwrite or not holds_run(run_dir):
        return
    found = list_checkpoints(run_dir)
    last = f", last checkpoint {found[-1].name}" if found else ""
    raise ConfigError(f"run_dir {run_dir} already holds a run ({len(found)} checkpoint(s){last}); pass "
                      "--resume latest to continue it, --overwrite to move it aside and start anew, or choose "
                      "another run_dir")


def lock_path(run_dir: Union[str, Path]) -> Path:
    """The lock file of a run folder: beside it (``.<name>.lock``), so moving the folder aside keeps it."""
    run_dir = Path(run_dir).absolute()
    return run_dir.parent / f".{run_dir.name}.lock"


def lock_run_dir(run_dir: Union[str, Path]) -> Optional[IO[str]]:
    """Hold ``run_dir`` for this process until the returned file is closed (or the process ends): a second
    clipkd process training into it (a relaunch, a duplicated job) is refused naming the first, instead of taking
    over a folder whose run has not logged a step yet. None where file locks are not available."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        return None
    path = lock_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(f"run_dir {run_dir} is in use by a clipkd run still going ({holder}); wait for it to end, "
                          "stop it, or choose another run_dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
    handle.flush()
    return handle


def move_aside(run_dir: Union[str, Path]) -> Optional[Path]:
    """Rename a run folder that holds a run to ``<name>.replaced-<time>`` beside it; returns the new place."""
    run_dir = Path(run_dir)
    return move_folder_aside(run_dir) if holds_run(run_dir) else None


def truncate_metrics(run_dir: Union[str, Path], step: int) -> int:
    """Drop the ``metrics.jsonl`` rows logged after ``step`` (a resume from that step logs them again).

    Rewritten atomically; returns the number of rows dropped."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return 0
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    keep = []
    for line in lines:
        row_step = _row_step(line)
        if row_step is not None and row_step <= step:  # a row torn by a kill during the write is dropped
            keep.append(line)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
    os.replace(tmp, path)
    return len(lines) - len(keep)


def prepare_run_dir(run_dir: Path, resume: Optional[str], overwrite: bool, is_main: bool) -> None:
    """Refuse a folder holding another run (every process); rank 0 (``is_main``) moves it aside on ``overwrite``
    and cleans crash left-overs."""
    check_run_dir(run_dir, resume, overwrite)
    if is_main:
        if overwrite and (moved := move_aside(run_dir)):
            log.warning("--overwrite: moved the run that was in %s to %s", run_dir, moved)
        if not resume and (cleared := clear_untrained(run_dir)):
            log.info("%s: an earlier attempt trained no step; its log is replaced (%s)", run_dir,
                     ", ".join(p.name for p in cleared))
        for action in ckpt.clean_leftovers(run_dir):
            log.warning("checkpoint left-over of an interrupted write: %s", action)
