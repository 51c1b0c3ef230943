"""Preflight: every check that needs the filesystem, the model registry or checkpoint headers, before anything
is built. A job runs it once: rank 0 reads and checks, the verdict is broadcast
(:meth:`clipkd.runtime.distributed.DistEnv.from_main`)."""

from __future__ import annotations

from typing import Optional

from clipkd.build.checks import check_benchmark, check_data, check_model
from clipkd.build.models import teacher_in_use
from clipkd.config import TrainConfig, teacher_fields, teacher_list
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


def check_sigmoid_student(cfg: TrainConfig) -> list[str]:
    """The terms that read the student's logit bias (``NEEDS_BIAS``: the sigmoid ones) need a student that has one:
    read from its model config, before any model is built (a model whose config cannot be read here, e.g.
    ``hf-hub:``, is checked when it is built, by :class:`~clipkd.models.student.DistillStudent`)."""
    from clipkd.embeddings import NEEDS_BIAS
    from clipkd.losses.terms import TERMS
    from clipkd.models.open_clip_adapter import has_logit_bias

    terms = [t for t in cfg.distill.active_terms() if NEEDS_BIAS in TERMS[t].needs]
    if not terms or has_logit_bias(cfg.student.model) is not False:
        return []
    return [f"student.model: {cfg.student.model} is a softmax model (no logit bias), but {', '.join(terms)} of "
            f"{cfg.distill.weights_source} need a sigmoid student: use a SigLIP model (`clipkd models` marks them) "
            "or a softmax recipe"]


def open_teacher_cache(cfg: TrainConfig) -> tuple[Optional[dict], list[str]]:
    """(manifest, problems) of the run's reinforced data (``distill.teacher_cache``), compared with its teacher,
    data, ``data.crop_scale`` and ``distill.cache_views`` (:func:`clipkd.reinforce.check.cache_problems`)."""
    from clipkd.reinforce.check import cache_problems

    assert cfg.teacher is not None and cfg.distill.teacher_cache
    return cache_problems(cfg.distill.teacher_cache, teacher_list(cfg.teacher), cfg.data, cfg.distill.cache_views)
