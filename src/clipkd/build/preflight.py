"""Preflight: every check that needs the filesystem, the model registry or checkpoint headers, before anything
is built. A job runs it once: rank 0 reads and checks, the verdict is broadcast
(:meth:`clipkd.runtime.distributed.DistEnv.from_main`)."""

from __future__ import annotations

from typing import Optional

from clipkd.build.checks import check_benchmark, check_data, check_model
from clipkd.build.models import teacher_in_use
from clipkd.config import TrainConfig, teacher_fields, teacher_list
from clipkd.losses.recipes import get_recipe
from clipkd.errors import ConfigError


def preflight(cfg: TrainConfig) -> Optional[dict]:
    """Checks that need the filesystem, the model registry or checkpoint headers, before anything is built.

    Model configs are parsed, checkpoints are compared by tensor names and shapes with the architecture built
    on the meta device, pretrained tags are fetched (or found in the cache), data files and CSV columns exist,
    reinforced data fits the run. Returns the reinforced data's manifest when the run trains from it (checked).
    """
    manifest = None
    problems: list[str] = []
    builds_teacher = teacher_in_use(cfg) or cfg.student.inherit is not None  # inherit: the student's weights
    teachers = teacher_fields(cfg.teacher) if builds_teacher else []  # one the run does not build: unchecked
    for side, mc in [*teachers, ("student", cfg.student)]:
        problems += check_model(f"{side}.model", mc.model, mc.pretrained, f"{side}.pretrained")
    problems += check_sigmoid_student(cfg) if not problems else []
    problems += check_data("data", cfg.data, unique_shards=bool(teachers and cfg.distill.teacher_cache))
    if cfg.eval.val_data is not None:
        problems += check_data("eval.val_data", cfg.eval.val_data)
    for i, spec in enumerate(cfg.eval.benchmarks):
        problems += check_benchmark(f"eval.benchmarks.{i}", spec)
    if teachers and cfg.distill.teacher_cache:
        manifest, found = open_teacher_cache(cfg)
        problems += [f"distill.teacher_cache: {cfg.distill.teacher_cache}: {p}" for p in found]
    if problems:
        raise ConfigError("invalid config:\n" + "\n".join(f"  {p}" for p in problems))
    return manifest


SIGMOID_TERMS = ("siglip", "sigmoid_crd")


def check_sigmoid_student(cfg: TrainConfig) -> list[str]:
    """The sigmoid terms need a student with a logit bias: read from its model config, before any model is built
    (a model whose config cannot be read here, e.g. ``hf-hub:``, is checked when it is built)."""
    d = cfg.distill
    weights = d.weights if d.weights is not None else get_recipe(d.recipe).weights
    terms = [t for t in SIGMOID_TERMS if weights.get(t, 0) > 0]
    if not terms:
        return []
    from clipkd.models.open_clip_adapter import model_config

    try:
        sigmoid = model_config(cfg.student.model).get("init_logit_bias") is not None
    except Exception:  # noqa: BLE001 - no config to read without building: the build checks it
        return []
    source = "distill.weights" if d.weights is not None else f"distill.recipe '{d.recipe}'"
    return [] if sigmoid else [
        f"student.model: {cfg.student.model} is a softmax model (no logit bias), but {', '.join(terms)} of {source} "
        "need a sigmoid student: use a SigLIP model (`clipkd models` marks them) or a softmax recipe"]


def open_teacher_cache(cfg: TrainConfig) -> tuple[Optional[dict], list[str]]:
    """(manifest, problems) of the run's reinforced data (``distill.teacher_cache``), compared with its teacher,
    data, ``data.crop_scale`` and ``distill.cache_views`` (:func:`clipkd.reinforce.check.cache_problems`)."""
    from clipkd.reinforce.check import cache_problems

    assert cfg.teacher is not None and cfg.distill.teacher_cache
    return cache_problems(cfg.distill.teacher_cache, teacher_list(cfg.teacher), cfg.data, cfg.distill.cache_views)
