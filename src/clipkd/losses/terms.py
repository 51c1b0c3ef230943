"""Loss terms: small modules, registered by name, that feed the right embeddings to one formula each.

Which embeddings a term uses: ``task``, ``crd``, ``siglip`` and ``sigmoid_crd`` use the student's own embeddings
(the last two with its logit bias: a sigmoid student); ``fd``, ``icl``, ``gd``
and ``afd`` use the student's embeddings projected to the teacher's size and re-normalised (identity when
the sizes match). The learnable ICL/AFD scales and the AFD fusion heads live in the student module.

Every term's ``ensemble`` (set by :class:`~clipkd.losses.combine.DistillLoss`; default one teacher) says how
to split the concatenated teacher embeddings and combine the teachers: the formulas of
:mod:`clipkd.losses.ensemble`, which reduce exactly to :mod:`clipkd.losses.functional` for one teacher.
"""

from __future__ import annotations

from typing import ClassVar, Optional

import torch
from torch import nn

from clipkd.embeddings import (
    NEEDS_AFD,
    NEEDS_BIAS,
    NEEDS_ICL_SCALE,
    NEEDS_PROJECTION,
    NEEDS_TEACHER,
    Embeddings,
    StudentOutput,
)
from clipkd.losses import catalog
from clipkd.losses import ensemble as LE
from clipkd.losses import functional as LF

TERMS: dict[str, type["LossTerm"]] = {}


def register_term(cls: type["LossTerm"]) -> type["LossTerm"]:
    """Class decorator: make a term available by its ``name`` in configs and recipes.

    The equation comes from :mod:`clipkd.losses.catalog` (the built-in terms); a term defined elsewhere may set
    its own ``equation``, which is then added to the catalog.
    """
    if cls.name in TERMS:
        raise ValueError(f"loss term '{cls.name}' registered twice")
    own = cls.__dict__.get("equation")
    if own is not None:
        catalog.add_term(cls.name, own)
    elif cls.name in catalog.EQUATIONS:
        cls.equation = catalog.EQUATIONS[cls.name]
    else:
        raise ValueError(f"loss term '{cls.name}' has no equation: add it to clipkd.losses.catalog.EQUATIONS "
                         "or set the class's `equation`")
    TERMS[cls.name] = cls
    return cls


def create_term(name: str) -> "LossTerm":
    """Instantiate a registered term by name."""
    if name not in TERMS:
        raise KeyError(f"unknown loss term '{name}' (known: {', '.join(sorted(TERMS))})")
    return TERMS[name]()


class LossTerm(nn.Module):
    """One distillation objective. Subclasses set ``name``, ``needs`` and ``compute``; ``equation`` comes from
    :mod:`clipkd.losses.catalog` at registration (or is set by a term defined outside clipkd)."""

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset()
    equation: ClassVar[str]
    ensemble: LE.Ensemble = LE.SINGLE
    """The teachers this term combines (their sizes and weights); set by ``DistillLoss``."""

    def forward(self, student: StudentOutput, teacher: Optional[Embeddings]) -> torch.Tensor:
        if NEEDS_TEACHER in self.needs and teacher is None:
            raise ValueError(f"loss term '{self.name}' needs the teacher's embeddings")
        return self.compute(student, teacher)

    def compute(self, s: StudentOutput, t: Optional[Embeddings]) -> torch.Tensor:
        raise NotImplementedError


@register_term
class TaskTerm(LossTerm):
    name = "task"

    def compute(self, s, t):
        return LF.clip_loss(s.img, s.txt, s.scale)


@register_term
class CRDTerm(LossTerm):
    name = "crd"
    needs = frozenset({NEEDS_TEACHER})

    def compute(self, s, t):
        return LE.crd_loss(self.ensemble, s.img, s.txt, s.scale, t.img, t.txt, t.scale)


@register_term
class SigLIPTerm(LossTerm):
    name = "siglip"
    needs = frozenset({NEEDS_BIAS})

    def compute(self, s, t):
        return LF.siglip_loss(s.img, s.txt, s.scale, s.bias)


@register_term
class SigmoidCRDTerm(LossTerm):
    name = "sigmoid_crd"
    needs = frozenset({NEEDS_TEACHER, NEEDS_BIAS})

    def compute(self, s, t):
        return LE.sigmoid_crd_loss(self.ensemble, s.img, s.txt, s.scale, s.bias, t.img, t.txt, t.scale, t.bias)


@register_term
class FDTerm(LossTerm):
    name = "fd"
    needs = frozenset({NEEDS_TEACHER, NEEDS_PROJECTION})

    def compute(self, s, t):
        return LE.fd_loss(self.ensemble, s.img_proj, s.txt_proj, t.img, t.txt)


@register_term
class ICLTerm(LossTerm):
    name = "icl"
    needs = frozenset({NEEDS_TEACHER, NEEDS_PROJECTION, NEEDS_ICL_SCALE})

    def compute(self, s, t):
        return LE.icl_loss(self.ensemble, s.img_proj, s.txt_proj, t.img, t.txt, s.icl_scale)


@register_term
class GDTerm(LossTerm):
    name = "gd"
    needs = frozenset({NEEDS_TEACHER, NEEDS_PROJECTION})

    def compute(self, s, t):
        return LE.gd_loss(self.ensemble, s.img_proj, s.txt_proj, s.scale, t.img, t.txt, t.scale)


@register_term
class AFDTerm(LossTerm):
    name = "afd"
    needs = frozenset({NEEDS_TEACHER, NEEDS_AFD})

    def compute(self, s, t):
        return LE.afd_loss(self.ensemble, s.afd_img, s.afd_txt, s.afd_scale)
