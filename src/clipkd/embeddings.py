"""The containers every layer passes around: embeddings, the student's outputs and what a loss term needs.

A neutral module below ``models`` and ``losses``: the formulas read these containers and declare their needs
(``NEEDS_*``); the student builds the heads the terms declare. Neither package imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable, Mapping, Optional, Sequence, Union

import torch

TextBatch = Union[torch.Tensor, Mapping[str, torch.Tensor]]
"""What a tokenizer returns: token ids ``[N, L]``, or a mapping of tensors (e.g. ids + attention mask)."""


@dataclass
class Embeddings:
    """Normalised image and text embeddings of one batch, with the model's scale multiplier and, for a sigmoid
    model (SigLIP), its logit bias (None for a softmax CLIP model).

    An ensemble's joined embeddings (:func:`join_teachers`) have one scale per teacher and, when any teacher has a
    bias, one bias per teacher, NaN for a teacher without one.
    """

    img: torch.Tensor
    txt: torch.Tensor
    scale: torch.Tensor
    bias: Optional[torch.Tensor] = None

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Embeddings":
        """Apply ``fn`` to every per-sample tensor (e.g. a cross-process gather); scales are kept."""
        return replace(self, **{f.name: fn(getattr(self, f.name)) for f in fields(self) if is_batched_field(f.name)})


def is_batched_field(name: str) -> bool:
    """Whether an embeddings field holds one row per sample (everything but the ``*scale`` multipliers and the
    logit ``bias``)."""
    return not name.endswith(("scale", "bias"))


# What a loss term may need from the student besides its own embeddings.
NEEDS_TEACHER = "teacher"
NEEDS_PROJECTION = "projection"
NEEDS_ICL_SCALE = "icl_scale"
NEEDS_AFD = "afd"
NEEDS_BIAS = "logit_bias"
"""The term reads the student's logit bias: the student must be a sigmoid model (its encoder has one)."""
REQUIREMENTS = frozenset({NEEDS_TEACHER, NEEDS_PROJECTION, NEEDS_ICL_SCALE, NEEDS_AFD, NEEDS_BIAS})


@dataclass
class StudentOutput(Embeddings):
    """The student's embeddings for one batch.

    ``img``/``txt``/``scale``: the student's own normalised embeddings and logit-scale multiplier.
    ``img_proj``/``txt_proj``: projected to the teacher's size and re-normalised (the same tensors as
    ``img``/``txt`` when the sizes match). ``afd_img``/``afd_txt``: fused with the teacher (AFD only).

    With an ensemble of T teachers (sizes ``D_t``): ``img_proj``/``txt_proj`` and ``afd_img``/``afd_txt`` are
    ``[N, sum_t D_t]``, teacher t's block in teacher order (``img_proj`` is None when no term needs it), and
    ``icl_scale``/``afd_scale`` are ``[T]``; for one teacher they are as above, with 0-d scales.
    """

    img_proj: Optional[torch.Tensor] = None
    txt_proj: Optional[torch.Tensor] = None
    icl_scale: Optional[torch.Tensor] = None
    afd_img: Optional[torch.Tensor] = None
    afd_txt: Optional[torch.Tensor] = None
    afd_scale: Optional[torch.Tensor] = None

    def map(self, fn):  # type: ignore[override]
        """Apply ``fn`` to every per-sample tensor that is set; scales are kept."""
        wrapped = lambda t: None if t is None else fn(t)  # noqa: E731
        return super().map(wrapped)


def join_teachers(teachers: Sequence[Embeddings]) -> Embeddings:
    """The ensemble layout of several teachers' embeddings (one teacher: returned unchanged).

    ``bias`` is None when no teacher has one, else ``[T]`` with NaN for each teacher without a bias."""
    if len(teachers) == 1:
        return teachers[0]
    scale = torch.stack([torch.as_tensor(t.scale).reshape(()) for t in teachers])
    return Embeddings(
        img=torch.cat([t.img for t in teachers], dim=1),
        txt=torch.cat([t.txt for t in teachers], dim=1),
        scale=scale,
        bias=join_biases([t.bias for t in teachers], like=scale),
    )


def join_biases(biases: Sequence[Optional[torch.Tensor | float]], like: torch.Tensor) -> Optional[torch.Tensor]:
    """Several models' logit biases as one ``[T]`` tensor (NaN: the model has none), or None when none has one."""
    if all(b is None for b in biases):
        return None
    return torch.stack([like.new_full((), float("nan")) if b is None else torch.as_tensor(b).to(like).reshape(())
                        for b in biases])  # NaN made where ``like`` lives: no host-to-device copy per step
