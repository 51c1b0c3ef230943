"""One entry point for every encoder name clipkd knows: open_clip models and the composite LiT teacher."""

from __future__ import annotations

import logging
from typing import Optional, Sequence

from clipkd.models.composite import LIT_NAME, create_lit_encoder
from clipkd.models.encoders import ClipEncoder
from clipkd.models.open_clip_adapter import create_open_clip_encoder, list_models

log = logging.getLogger(__name__)

COMPOSITE_MODELS = (LIT_NAME,)
ROLES = ("teacher", "student", "model", "inherited")


def known_model(name: str) -> bool:
    return name in COMPOSITE_MODELS or name.startswith(("hf-hub:", "local-dir:")) or name in list_models()


def create_encoder(name: str, pretrained: Optional[str] = None, image_mean: Optional[Sequence[float]] = None,
                   image_std: Optional[Sequence[float]] = None, role: str = "model") -> ClipEncoder:
    """``lit-effnetlite0-minilm`` (``pretrained`` = its trained heads) or any open_clip model.

    ``role`` (``teacher``, ``student`` or ``model``) decides how an encoder that stays random is reported:
    see :func:`report_untrained`. Loaded weights are not reported.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if name == LIT_NAME:
        encoder: ClipEncoder = create_lit_encoder(heads=pretrained)
    else:
        encoder = create_open_clip_encoder(name, pretrained, image_mean=image_mean, image_std=image_std)
    report_untrained(encoder, name, role)
    return encoder


def report_untrained(encoder: ClipEncoder, name: str, role: str = "model") -> None:
    """Log that ``encoder`` kept random weights (``encoder.untrained``); nothing when they were all loaded.

    A student: INFO (training from scratch is normal). A teacher: a loud WARNING, since distilling from random
    weights is almost never meant. Any other model (e.g. one being evaluated): a WARNING.
    """
    what = encoder.untrained
    if not what or role == "inherited":  # a student about to take its teacher's weights (student.inherit)
        return
    random = "random weights" if what == "all weights" else f"random weights in {what}"
    if role == "student":
        log.info("student.model %s starts from %s: training from scratch (set student.pretrained to start from "
                 "a checkpoint or pretrained tag)", name, random)
    elif role == "teacher":
        log.warning(
            "THE TEACHER HAS RANDOM WEIGHTS: teacher.model %s was built with %s, so the student would be distilled "
            "from noise - almost never what you want. Point teacher.pretrained at trained weights: %s",
            name, random, _teacher_hint(name))
    else:
        log.warning("%s has %s: it is untrained, expect chance-level results (pass its weights as a pretrained "
                    "tag or checkpoint file)", name, random)


def _teacher_hint(name: str) -> str:
    if name == LIT_NAME:
        return ("the heads file the demo trains (heads.safetensors), e.g. teacher.pretrained: "
                "runs/demo/teacher/full/heads.safetensors (after `clipkd demo`)")
    return ("an open_clip pretrained tag of the model (e.g. ViT-B-32 with openai), or a checkpoint file, e.g. a "
            "model of the teacher's architecture trained first with `distill.recipe: baseline` (no teacher "
            "needed): teacher.pretrained: runs/<run>/checkpoints/step_<N>/student.safetensors")
