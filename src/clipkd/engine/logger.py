"""Metrics to a JSONL file and TensorBoard (rank 0 writes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Optional, Union


class MetricLogger:
    """Append ``{"step": ..., <name>: value}`` lines to ``metrics.jsonl``; mirror scalars to TensorBoard."""

    def __init__(self, run_dir: Union[str, Path], tensorboard: bool = True, purge_step: Optional[int] = None):
        """``purge_step``: on resume, TensorBoard drops the events logged from this step on (``metrics.jsonl`` is
        truncated by :func:`clipkd.engine.run_dir.truncate_metrics`)."""
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=purge_step)

    def log(self, step: int, metrics: Mapping[str, float], prefix: str = "train") -> None:
        record = {"step": step, **{f"{prefix}/{k}": float(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(f"{prefix}/{k}", float(v), step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


class NullLogger:
    """What ranks other than 0 log to: nothing."""

    def log(self, step: int, metrics: Mapping[str, float], prefix: str = "train") -> None:
        pass

    def close(self) -> None:
        pass


def read_metrics(run_dir: Union[str, Path], prefix: Optional[str] = None) -> list[dict]:
    """The logged records of a run (optionally only those holding keys with ``prefix``)."""
    path = Path(run_dir) / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if prefix:
        records = [r for r in records if any(k.startswith(prefix + "/") for k in r)]
    return records
