"""Resuming a run: a resume continues the same run or is refused (another config in the keys that break
exactness, inputs whose content changed since the run started), and what the abandoned future leaves (newer
checkpoints, log rows) is moved aside or dropped."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from clipkd.build.inputs import input_changes, saved_inputs
from clipkd.config import TrainConfig
from clipkd.config_diff import breaking_changes
from clipkd.engine import checkpoint as ckpt
from clipkd.engine.run_dir import truncate_metrics
from clipkd.errors import ConfigError

log = logging.getLogger(__name__)


def config_changes(path: Path, cfg: TrainConfig, needs_teacher: bool) -> list[str]:
    """The keys that break exactness in which ``cfg`` differs from the config checkpoint ``path`` was written with;
    the teacher section and cache of a run whose terms need no teacher play no part."""
    saved, current = ckpt.read_config(path), cfg.model_dump(mode="json")
    if not needs_teacher:
        saved, current = ({**c, "teacher": None, "distill": {**(c.get("distill") or {}), "teacher_cache": None}}
                          for c in (saved, current))
    return breaking_changes(saved, current)


def refuse_changes(run_dir: Path, changes: list[str], what: str, undo: str, meaning: str, allow: bool) -> None:
    """A resume that would not continue the same run: refused listing ``changes``, or (``allow``: the user passed
    ``--allow-config-change``) logged."""
    if not changes:
        return
    listing = "\n".join(f"  {c}" for c in changes)
    if not allow:
        raise ConfigError(f"{what}; resuming would not continue the same run:\n{listing}\n{undo}, or pass "
                          f"--allow-config-change if you mean to {meaning}")
    log.warning("--allow-config-change: resuming %s although %s:\n%s", run_dir, what, listing)


def check_resume(run_dir: Path, path: Path, cfg: TrainConfig, inputs: dict[str, Any], needs_teacher: bool,
                 allow: bool) -> None:
    """Refuse (unless ``allow``) to resume from checkpoint ``path`` with another config, or when the run's inputs
    (data, teachers, reinforced data, benchmarks) changed content since it started; a run that recorded no inputs
    is continued."""
    refuse_changes(run_dir, config_changes(path, cfg, needs_teacher),
                   f"checkpoint {path} was written with another config", "revert these keys", "change them", allow)
    changes = input_changes(run_dir, inputs) if saved_inputs(run_dir) is not None else []
    refuse_changes(run_dir, changes, f"{run_dir}: the run's inputs changed since it started",
                   "restore them, start a new run (--overwrite)", "continue on the new inputs", allow)


def forget_after(run_dir: Path, step: int) -> None:
    """Rank 0: checkpoints and log rows newer than the resumed step belong to an abandoned future."""
    moved = ckpt.abandon_after(run_dir, step)
    if moved:
        log.warning("resuming at step %d: moved %d newer checkpoint(s) aside to %s; --resume latest will "
                    "not return to them", step, len(moved), moved[0].parent)
    dropped = truncate_metrics(run_dir, step)
    if dropped:
        log.warning("resuming at step %d: dropped %d metrics.jsonl row(s) logged after it", step, dropped)
