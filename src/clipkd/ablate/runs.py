"""The runs of a study: one per arm and seed, each a normal `clipkd train` run under ``<out>/runs/<arm>-seed<N>``.

A run is finished when its ``result.json`` exists (written after training and its last evaluation) and the config
it was trained with gives the same result as the study's config for it (:func:`changes`); finished runs are never
trained again, an interrupted one resumes from its latest checkpoint, and a folder holding a run of another config
(the study changed) is moved aside and trained anew. Studies may share one folder of runs (``runs:``).
"""

from __future__ import annotations

import copy
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Optional

import yaml

from clipkd.ablate.study import Arm, StudyConfig, arms, sweep_arm_name, weight_term
from clipkd.config import TrainConfig, apply_overrides, dump_config, validate_config
from clipkd.config_diff import breaking_changes, flatten
from clipkd.errors import ConfigError

RESULT_FILE = "result.json"


@dataclass(frozen=True)
class RunSpec:
    arm: Arm
    seed: int

    @property
    def name(self) -> str:
        return f"{self.arm.name}-seed{self.seed}"


def plan(study: StudyConfig) -> list[RunSpec]:
    """Every run of the study: each arm once per seed, in arm order."""
    return [RunSpec(arm, seed) for arm in arms(study) for seed in study.seeds]


def run_dir(study: StudyConfig, spec: RunSpec) -> Path:
    return Path(study.runs or Path(study.out) / "runs") / spec.name


def _recipe_presets(raw: dict[str, Any], overrides: dict[str, Any]) -> None:
    """An arm that names a recipe trains that recipe: the base's own loss weights and mask ratio are dropped unless
    the arm sets them (whole, or one weight as ``distill.weights.<term>``)."""
    distill = raw.get("distill")
    if "distill.recipe" not in overrides or not isinstance(distill, dict):
        return
    for key in ("weights", "mask_ratio"):
        if not any(k == f"distill.{key}" or k.startswith(f"distill.{key}.") for k in overrides):
            distill.pop(key, None)


def run_config(study: StudyConfig, base: dict[str, Any], spec: RunSpec) -> TrainConfig:
    """The base config with the arm's overrides, the seed, the run folder and evaluations along the run."""
    raw = copy.deepcopy(base)
    _recipe_presets(raw, spec.arm.overrides)
    steps = int(raw.get("optim", {}).get("steps", 1))
    items = {**spec.arm.overrides, "seed": spec.seed, "run_dir": str(run_dir(study, spec)),
             "eval.every_steps": max(1, steps // study.curve_points)}
    try:
        apply_overrides(raw, [f"{k}={json.dumps(v)}" for k, v in items.items()])
        return validate_config(raw)
    except ConfigError as exc:
        raise ConfigError(f"run {spec.name}: {exc}") from None


def swept_value(cfg: TrainConfig, key: str) -> Optional[float]:
    """The number ``key`` stands for in ``cfg`` as the run uses it (unset: the recipe's loss weight and mask ratio,
    all the views the teacher cache holds), or None."""
    value = flatten(cfg.model_dump(mode="json")).get(key)
    term = weight_term(key)
    if value is None and term:
        manifest = _cache_manifest(cfg) if term == "gd" else None
        dims = [int(t["embed_dim"]) for t in manifest["teachers"]] if manifest else []
        if term != "gd" or len(dims) == 1:  # the GD weight follows the batch and the teacher's dim
            value = cfg.distill.resolved(cfg.data.batch_size * cfg.optim.accum_steps, *dims[:1])[0].get(term)
    elif value is None and key == "distill.mask_ratio":
        value = cfg.distill.resolved()[1]
    elif value is None and key == "distill.cache_views":
        manifest = _cache_manifest(cfg)
        value = manifest["views"] if manifest else None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _cache_manifest(cfg: TrainConfig) -> Optional[dict[str, Any]]:
    if not cfg.distill.teacher_cache:
        return None
    from clipkd.reinforce.manifest import load_manifest

    return load_manifest(cfg.distill.teacher_cache)


def sweep_points(study: StudyConfig, planned: list[tuple[RunSpec, TrainConfig]]) -> dict[str, dict[str, Any]]:
    """Per sweep: its key, its arm and ``points`` (value, arm name), the swept arm at its own value when known."""
    configs = {spec.arm.name: cfg for spec, cfg in planned}
    out = {}
    for name, sw in study.sweeps.items():
        own = swept_value(configs[sw.arm], sw.key)
        points = [(v, sweep_arm_name(name, v)) for v in sw.values]
        if own is not None and own not in sw.values:
            points.append((own, sw.arm))
        out[name] = {"key": sw.key, "arm": sw.arm, "points": points}
    return out


def current_inputs(cfg: TrainConfig, memo: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """:func:`clipkd.build.inputs.run_inputs` of ``cfg``; with ``memo`` (one per look at a study: the runs of a
    study share their data, benchmarks and teachers), once per distinct setup."""
    from clipkd.build.inputs import run_inputs

    if memo is None:
        return run_inputs(cfg)
    d = cfg.model_dump(mode="json")
    key = json.dumps([d["student"], d["teacher"], d["data"], d["eval"], d["distill"]], sort_keys=True)
    if key not in memo:
        memo[key] = run_inputs(cfg)
    return memo[key]


def changes(folder: Path, cfg: TrainConfig, memo: Optional[dict[str, Any]] = None) -> list[str]:
    """What differs between the run in ``folder`` and the run of ``cfg``: the config it was trained with
    (``key: old -> new``, leaving out what cannot change its result: where and how often it writes, logs or
    evaluates, but not the benchmarks it is judged on), and the content of its inputs (data, teachers, reinforced
    data, benchmarks: :mod:`clipkd.build.inputs`), so a run is not reused after its data was rebuilt in place."""
    from clipkd.build.inputs import input_changes

    path = folder / "config.yaml"
    if not path.is_file():
        return ["config.yaml: missing"]
    saved = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    current = yaml.safe_load(dump_config(cfg))
    found = breaking_changes(saved, current)
    if (saved.get("eval") or {}).get("benchmarks") != current["eval"]["benchmarks"]:
        found.append("eval.benchmarks")
    return found + input_changes(folder, current_inputs(cfg, memo))


@dataclass(frozen=True)
class RunState:
    """Where a planned run stands: ``result`` when it finished with the planned config; ``changes`` (what
    differs, see :func:`changes`) when its folder holds a finished run of another config; neither when it is to
    train (new, or interrupted: it resumes)."""

    result: Optional[dict] = None
    changes: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.result is not None:
            return "finished"
        if self.changes:
            return f"to train again (trained with another config: {'; '.join(self.changes)})"
        return "to train"


def run_state(folder: Path, cfg: TrainConfig, memo: Optional[dict[str, Any]] = None) -> RunState:
    """The :class:`RunState` of the run of ``cfg`` in ``folder`` (``memo``: see :func:`current_inputs`)."""
    path = folder / RESULT_FILE
    if not path.is_file():
        return RunState()
    found = changes(folder, cfg, memo)
    if found:
        return RunState(changes=tuple(found))
    return RunState(result=json.loads(path.read_text(encoding="utf-8")))


class Outcome(NamedTuple):
    """How a run ended: ``stopped_by`` the signal that asked it to stop (it wrote a checkpoint), or None;
    ``complete``: trained to the end with its final evaluation (a signal during that evaluation stops the study,
    but the run's result stands)."""

    stopped_by: Optional[str]
    complete: bool


def train(cfg: TrainConfig, fresh: bool = False) -> Outcome:
    """Train, or finish an interrupted run of the same config; a run of another config (or any run, ``fresh``) is
    moved aside."""
    from clipkd.build.hooks import eval_hooks
    from clipkd.engine.trainer import Trainer

    if fresh:
        trainer = Trainer(cfg, overwrite=True, eval_hooks=eval_hooks)
    else:
        try:
            trainer = Trainer(cfg, resume="latest", eval_hooks=eval_hooks)
        except ConfigError:
            trainer = Trainer(cfg, overwrite=True, eval_hooks=eval_hooks)
    result = trainer.fit()
    return Outcome(result.stopped_by, result.complete)


def _samples_per_s(rows: list[dict]) -> Optional[float]:
    speeds = [r["train/samples_per_s"] for r in rows if "train/samples_per_s" in r][1:]  # the first holds start-up
    return statistics.median(speeds) if speeds else None


def collect(study: StudyConfig, spec: RunSpec, cfg: TrainConfig) -> dict:
    """The run's result from its ``metrics.jsonl``: the val/test metric along the steps and at the end, and its
    training speed; written as ``result.json``."""
    from clipkd.engine.logger import read_metrics
    from clipkd.files import write_json

    sel = study.select
    rows = read_metrics(cfg.run_dir)
    keys = {side: f"eval/{name}/{sel.metric}" for side, name in (("val", sel.val), ("test", sel.test))}
    by_step: dict[int, dict] = {}  # each benchmark is logged on its own row
    for r in rows:
        found = {side: r[k] for side, k in keys.items() if k in r}
        if found:
            by_step.setdefault(r["step"], {"step": r["step"]}).update(found)
    curve = [by_step[s] for s in sorted(by_step)]
    if not curve or any(side not in curve[-1] for side in keys):
        raise ConfigError(f"run {spec.name}: no {sel.metric} of {sel.val} and {sel.test} logged "
                          f"(are they in eval.benchmarks?)")
    if curve[-1]["step"] != cfg.optim.steps:  # a run that stopped early is not a result
        raise ConfigError(f"run {spec.name}: its last evaluation is at step {curve[-1]['step']}, not at the end "
                          f"({cfg.optim.steps}); it did not finish")
    result = {"arm": spec.arm.name, "seed": spec.seed, "overrides": spec.arm.overrides, "steps": cfg.optim.steps,
              "val": curve[-1]["val"], "test": curve[-1]["test"], "curve": curve,
              "samples_per_s": _samples_per_s(rows)}
    write_json(Path(cfg.run_dir) / RESULT_FILE, result)
    return result
