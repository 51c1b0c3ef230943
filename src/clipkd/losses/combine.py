"""The weighted sum of loss terms: the one place where term weights are applied (teacher weights: `.ensemble`)."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch
from torch import nn

from clipkd.embeddings import NEEDS_TEACHER, Embeddings, StudentOutput
from clipkd.losses.catalog import ENSEMBLE_RULES, validate_weights
from clipkd.losses.ensemble import Ensemble
from clipkd.losses.terms import create_term


class DistillLoss(nn.Module):
    """``L = sum_k w_k * term_k(student, teacher)``; terms with weight 0 are not built nor computed.

    Returns ``{"loss": total, <term>: value, ...}``; the total carries the graph, the per-term values are
    detached (for logging).

    Args:
        weights: ``{term: weight}``.
        teacher_dims: the embedding size of each teacher of an ensemble, in teacher order; None: one teacher,
            of whatever size its embeddings have.
        teacher_weights: each teacher's weight (> 0, summing to 1); None: equal weights.
    """

    def __init__(
        self,
        weights: Mapping[str, float],
        teacher_dims: Optional[Sequence[int]] = None,
        teacher_weights: Optional[Sequence[float]] = None,
    ):
        super().__init__()
        self.weights = {k: w for k, w in validate_weights(weights).items() if w > 0}
        self.ensemble = Ensemble.create(teacher_dims, teacher_weights)
        if self.ensemble.size > 1:
            _check_ensemble_rules(self.weights)
        self.terms = nn.ModuleDict({name: create_term(name) for name in self.weights})
        for term in self.terms.values():
            term.ensemble = self.ensemble

    @property
    def teacher_dims(self) -> Optional[tuple[int, ...]]:
        """The teachers' embedding sizes (None: one teacher of unspecified size)."""
        return self.ensemble.dims

    @property
    def needs(self) -> frozenset[str]:
        """What the active terms need from the student and teacher (union of their ``needs``)."""
        return frozenset().union(*(t.needs for t in self.terms.values()))

    @property
    def needs_teacher(self) -> bool:
        return NEEDS_TEACHER in self.needs

    def forward(self, student: StudentOutput, teacher: Optional[Embeddings] = None) -> dict[str, torch.Tensor]:
        values = {name: term(student, teacher) for name, term in self.terms.items()}
        total = sum(self.weights[name] * v for name, v in values.items())
        return {"loss": total, **{name: v.detach() for name, v in values.items()}}


def _check_ensemble_rules(names: Mapping[str, float]) -> None:
    missing = sorted(n for n in names if n not in ENSEMBLE_RULES)
    if missing:
        raise ValueError(f"loss term(s) {missing} cannot combine several teachers: no rule in "
                         "clipkd.losses.catalog.ENSEMBLE_RULES")
