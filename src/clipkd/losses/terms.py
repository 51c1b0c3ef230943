"""Loss terms: small modules, registered by name, that feed the right embeddings to one formula each.

Which embeddings a term uses: ``task`` and ``crd`` use the student's own embeddings; ``fd``, ``icl``, ``gd``
and ``afd`` use the student's embeddings projected to the teacher's size and re-normalised (identity when
the sizes match). The learnable ICL/AFD scales and the AFD fusion heads live in the student module.
"""

from __future__ import annotations

from typing import ClassVar, Optional

import torch
from torch import nn

from clipkd.losses import functional as LF
from clipkd.models.encoders import Embeddings
from clipkd.models.student import NEEDS_AFD, NEEDS_ICL_SCALE, NEEDS_PROJECTION, NEEDS_TEACHER, StudentOutput

TERMS: dict[str, type["LossTerm"]] = {}


def register_term(cls: type["LossTerm"]) -> type["LossTerm"]:
    """Class decorator: make a term available by its ``name`` in configs and recipes."""
    if cls.name in TERMS:
        raise ValueError(f"loss term '{cls.name}' registered twice")
    TERMS[cls.name] = cls
    return cls


def create_term(name: str) -> "LossTerm":
    """Instantiate a registered term by name."""
    if name not in TERMS:
        raise KeyError(f"unknown loss term '{name}' (known: {', '.join(sorted(TERMS))})")
    return TERMS[name]()


class LossTerm(nn.Module):
    """One distillation objective. Subclasses set ``name``, ``needs``, ``equation`` and ``compute``."""

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset()
    equation: ClassVar[str]

    def forward(self, student: StudentOutput, teacher: Optional[Embeddings]) -> torch.Tensor:
        if NEEDS_TEACHER in self.needs and teacher is None:
            raise ValueError(f"loss term '{self.name}' needs the teacher's embeddings")
        return self.compute(student, teacher)

    def compute(self, s: StudentOutput, t: Optional[Embeddings]) -> torch.Tensor:
        raise NotImplementedError


@register_term
class TaskTerm(LossTerm):
    name = "task"
    equation = "1/2 [CE(s*I_s T_s^T, y) + CE(s*T_s I_s^T, y)]  (student's own CLIP loss)"

    def compute(self, s, t):
        return LF.clip_loss(s.img, s.txt, s.scale)


@register_term
class CRDTerm(LossTerm):
    name = "crd"
    needs = frozenset({NEEDS_TEACHER})
    equation = "1/2 [KL(softmax(T) || softmax(S)) + KL(softmax(T^T) || softmax(S^T))], S = s_s I_s T_s^T, T = s_t I_t T_t^T"

    def compute(self, s, t):
        return LF.crd_loss(s.img, s.txt, s.scale, t.img, t.txt, t.scale)


@register_term
class FDTerm(LossTerm):
    name = "fd"
    needs = frozenset({NEEDS_TEACHER, NEEDS_PROJECTION})
    equation = "mean((P(I_s) - I_t)^2) + mean((P(T_s) - T_t)^2)"

    def compute(self, s, t):
        return LF.fd_loss(s.img_proj, s.txt_proj, t.img, t.txt)


@register_term
class ICLTerm(LossTerm):
    name = "icl"
    needs = frozenset({NEEDS_TEACHER, NEEDS_PROJECTION, NEEDS_ICL_SCALE})
    equation = "1/2 [CE(c*P(I_s) T_t^T, y) + CE(c*P(T_s) I_t^T, y)], c = exp(learned log-scale) <= 100"

    def compute(self, s, t):
        return LF.icl_loss(s.img_proj, s.txt_proj, t.img, t.txt, s.icl_scale)


@register_term
class GDTerm(LossTerm):
    name = "gd"
    needs = frozenset({NEEDS_TEACHER, NEEDS_PROJECTION})
    equation = "sum_k mean((G_k(student) - G_k(teacher))^2), G = closed-form dL/d(embeddings) of both loss halves"

    def compute(self, s, t):
        return LF.gd_loss(s.img_proj, s.txt_proj, s.scale, t.img, t.txt, t.scale)


@register_term
class AFDTerm(LossTerm):
    name = "afd"
    needs = frozenset({NEEDS_TEACHER, NEEDS_AFD})
    equation = "clip_loss(F_I, F_T, c), F = normalise(phi([P(student); teacher])), c = exp(learned log-scale) <= 100"

    def compute(self, s, t):
        return LF.afd_loss(s.afd_img, s.afd_txt, s.afd_scale)
