"""The run folder: refuse to mix two runs in one folder, move an old run aside on request, and keep the log
consistent with the checkpoint a run resumes from. Rank 0 alone calls the functions that change the folder."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Optional, Union

from clipkd.engine.checkpoint import list_checkpoints
from clipkd.errors import ConfigError

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def holds_run(run_dir: Union[str, Path]) -> bool:
    """True when ``run_dir`` already holds (part of) a run: a config, a metrics log or a checkpoint."""
    run_dir = Path(run_dir)
    return (run_dir / "config.yaml").exists() or (run_dir / METRICS_FILE).exists() or bool(list_checkpoints(run_dir))


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


def move_aside(run_dir: Union[str, Path]) -> Optional[Path]:
    """Rename a run folder that holds a run to ``<name>.replaced-<time>`` beside it; returns the new place."""
    run_dir = Path(run_dir)
    if not holds_run(run_dir):
        return None
    dest = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while dest.exists():
        dest = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
        n += 1
    os.replace(run_dir, dest)
    return dest


def truncate_metrics(run_dir: Union[str, Path], step: int) -> int:
    """Drop the ``metrics.jsonl`` rows logged after ``step`` (a resume from that step logs them again).

    Rewritten atomically; returns the number of rows dropped."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return 0
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    keep = []
    for line in lines:
        try:
            row_step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            continue  # a row torn by a kill during the write
        if row_step <= step:
            keep.append(line)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
    os.replace(tmp, path)
    return len(lines) - len(keep)
