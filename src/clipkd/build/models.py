"""Config -> models: encoders, the teachers (one or an ensemble) and the student with the heads its loss terms need."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Optional

import torch

from clipkd.config import (InheritConfig, LockConfig, ModelConfig, TowersConfig, TrainConfig, teacher_list,
                           teacher_terms, teacher_weights)
from clipkd.distill import Distiller, build_distiller
from clipkd.errors import ConfigError
from clipkd.models.encoders import ClipEncoder
from clipkd.models.factory import create_encoder

if TYPE_CHECKING:
    from clipkd.reinforce.replay import ReinforcedViews

log = logging.getLogger(__name__)


def build_encoder(mc: ModelConfig, role: str = "model") -> ClipEncoder:
    """The encoder of a model section; ``role`` (teacher, student, model) says how random weights are reported
    (:func:`clipkd.models.factory.report_untrained`)."""
    return create_encoder(mc.model, mc.pretrained, image_mean=mc.image_mean, image_std=mc.image_std, role=role)


def teacher_in_use(cfg: TrainConfig) -> bool:
    """Whether the run builds its teacher: it has a teacher section and an active loss term that uses it.

    Recipe ``baseline`` (task loss only) never does: a teacher section given with it, and a
    ``distill.teacher_cache``, are ignored.
    """
    return bool(teacher_list(cfg.teacher)) and bool(teacher_terms(cfg.distill))


def global_batch_size(cfg: TrainConfig, world_size: int = 1) -> int:
    """Pairs per optimizer step over all processes: data.batch_size x optim.accum_steps x ``world_size``."""
    return cfg.data.batch_size * cfg.optim.accum_steps * world_size


def build_distiller_from_config(cfg: TrainConfig, world_size: int = 1,
                                stored: Optional["ReinforcedViews"] = None) -> Distiller:
    """Teacher (frozen) and student (with the heads the configured terms need).

    Without a teacher term (recipe ``baseline``) no teacher is built: the distiller's ``teacher`` is None.
    With ``stored`` views (reinforced data, :func:`clipkd.build.data.stored_views`) neither: the batches bring the teacher's
    embeddings, whose size the cache's manifest gives.
    The student is built first, so its initialisation depends on the seed alone, with or without a teacher.
    ``world_size``: the number of training processes; a recipe's GD weight follows the global batch
    (:func:`global_batch_size`) and the teacher's embedding dim.
    """
    torch.manual_seed(cfg.seed)  # identical initialisation for the same seed (and on every rank)
    student = build_encoder(cfg.student, role="student" if cfg.student.inherit is None else "inherited")
    teachers = teacher_list(cfg.teacher)
    shares = teacher_weights(teachers) if teachers else None
    built = [build_encoder(t, role="teacher") for t in teachers] if teacher_in_use(cfg) and stored is None else []
    if cfg.student.inherit is not None:
        inherit_student(student, built[0] if built else build_encoder(teachers[0], role="teacher"),
                        cfg.student.inherit)
    if cfg.student.towers is not None:
        load_student_towers(student, cfg.student.towers)
    if cfg.student.lock is not None:
        lock_student(student, cfg.student.lock)
    if stored is not None:
        log.info("teacher embeddings from %s (%d stored views per sample, %s order): no teacher is built",
                 stored.folder, stored.choice.views, stored.choice.order)
        weights, mask_ratio = cfg.distill.resolved(global_batch_size(cfg, world_size), _gd_dim(stored.embed_dims,
                                                                                                 shares))
        return build_distiller(student, None, weights, mask_ratio, stored.embed_dims, shares)
    if not built and teachers:
        d = cfg.distill
        ignored = " and distill.teacher_cache" if d.teacher_cache else ""
        use = ("only gave the student its starting weights and is not kept" if cfg.student.inherit is not None
               else "is ignored and no teacher is built")
        log.info("%s has no loss term that uses a teacher: the student trains alone, the teacher section%s "
                 "(%s) %s", d.weights_source, ignored, ", ".join(t.model for t in teachers), use)
    dims = [t.embed_dim for t in built] or [student.embed_dim]  # no teacher: GD is not active
    weights, mask_ratio = cfg.distill.resolved(global_batch_size(cfg, world_size), _gd_dim(dims, shares))
    return build_distiller(student, built or None, weights, mask_ratio, teacher_weights=shares)


def inherit_student(student: ClipEncoder, teacher: ClipEncoder, ic: InheritConfig) -> None:
    """``student.inherit``: the student's weights from the teacher's (:func:`clipkd.models.inherit.inherit_from`);
    ConfigError naming what does not map."""
    from clipkd.models.inherit import inherit_from

    s_model, t_model = getattr(student, "model", None), getattr(teacher, "model", None)
    if s_model is None or t_model is None:
        which = "student" if s_model is None else "teacher"
        raise ConfigError(f"student.inherit: the {which} ({type(student if s_model is None else teacher).__name__}) "
                          "is not an open_clip model; inheritance maps a ViT CLIP teacher onto a ViT CLIP student")
    try:
        report = inherit_from(s_model, t_model, ic.image_layers, ic.text_layers)
    except ValueError as exc:
        raise ConfigError(f"student.inherit: {exc}") from None
    widths = ", ".join(f"{k} {s}/{t}" for k, (s, t) in report.widths.items())
    own = f"; the student's own: {', '.join(report.own)}" if report.own else ""
    log.info("student inherits the teacher's weights: image layers %s, text layers %s, widths %s%s",
             report.image_layers, report.text_layers, widths, own)


def load_student_towers(student: ClipEncoder, tc: TowersConfig) -> None:
    """``student.towers``: pretrained weights into the student's image and/or text tower
    (:mod:`clipkd.models.towers`); ConfigError naming what does not fit, HubUnreachable for hub weights offline."""
    from clipkd.models.open_clip_adapter import _unreachable
    from clipkd.models.towers import load_image_tower, load_text_tower

    model = getattr(student, "model", None)
    if model is None:
        raise ConfigError(f"student.towers: the student ({type(student).__name__}) is not an open_clip model")
    for field, source, load in (("image", tc.image, load_image_tower), ("text", tc.text, load_text_tower)):
        if source is None:
            continue
        try:
            note = load(model, source)
        except Exception as exc:
            if _unreachable(exc) is not None:  # a missing cache entry is a FileNotFoundError too: asked first
                from clipkd.errors import HubUnreachable

                raise HubUnreachable(f"student.towers.{field}: timm's pretrained weights come from the model hub, "
                                     "which is unreachable, and are not cached; download them once with network "
                                     "access, or give a weights file") from exc
            if not isinstance(exc, (ValueError, FileNotFoundError)):
                raise
            raise ConfigError(f"student.towers.{field}: {exc}") from None
        log.info("student.towers.%s: %s loaded%s", field, source, f" ({note})" if field == "image" else
                 f"; {note}" if note else "")


def lock_student(student: ClipEncoder, lc: LockConfig) -> None:
    """``student.lock``: open_clip's tower locking on the student's model; ConfigError where it has none."""
    model = getattr(student, "model", None)
    for tower, wanted in (("image", lc.image), ("text", lc.text)):
        if wanted and not callable(getattr(model, f"lock_{tower}_tower", None)):
            raise ConfigError(f"student.lock.{tower}: the student ({type(student).__name__}) has no open_clip "
                              f"{tower} tower to lock")
    if lc.image:
        model.lock_image_tower(unlocked_groups=lc.image_unlocked_groups, freeze_bn_stats=lc.image_freeze_bn)
    if lc.text:
        model.lock_text_tower(unlocked_layers=lc.text_unlocked_layers, freeze_layer_norm=True)
    frozen = sum(p.numel() for p in student.parameters() if not p.requires_grad)
    log.info("student.lock: %.2f M of the student's %.2f M parameters are frozen", frozen / 1e6,
             sum(p.numel() for p in student.parameters()) / 1e6)


def _gd_dim(dims: list[int], shares: Optional[list[float]]) -> int:
    """The teacher embedding size a recipe's GD weight is calibrated for; an ensemble: the weighted mean size."""
    if len(dims) == 1 or not shares:
        return dims[0]
    return round(sum(d * w for d, w in zip(dims, shares)))
