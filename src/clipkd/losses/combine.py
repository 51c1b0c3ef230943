"""The weighted sum of loss terms: the one place where weights are applied."""

from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import nn

from clipkd.losses.catalog import validate_weights
from clipkd.losses.terms import create_term
from clipkd.models.encoders import Embeddings
from clipkd.models.student import NEEDS_TEACHER, StudentOutput


class DistillLoss(nn.Module):
    """``L = sum_k w_k * term_k(student, teacher)``; terms with weight 0 are not built nor computed.

    Returns ``{"loss": total, <term>: value, ...}``; the total carries the graph, the per-term values are
    detached (for logging).
    """

    def __init__(self, weights: Mapping[str, float]):
        super().__init__()
        self.weights = {k: w for k, w in validate_weights(weights).items() if w > 0}
        self.terms = nn.ModuleDict({name: create_term(name) for name in self.weights})

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
