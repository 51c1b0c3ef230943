"""Named presets of the paper's methods: loss weights plus the MFD mask ratio."""

from __future__ import annotations

import math
from dataclasses import dataclass

from clipkd.losses.combine import validate_weights

GD_WEIGHT = 5e6
"""GD weight for the paper's setting (global batch N=1024, teacher dim D=512).

The official code used 1e8 because it fed the logit scale where a temperature belongs, which flattened the
softmax. With the formula fixed, GD = sum_k mean((G_k^s - G_k^t)^2) with G ~ (s/N)(P - I)E. At initialisation
the student's softmax is near uniform and a trained teacher's gradients are near zero, so
GD ~ 4 s_s^2 / (N^2 D) with s_s = 1/0.07, while the task loss is ~ln N. lambda = ln(N) N^2 D / (4 s_s^2) makes
them equal: 4.6e6 at N=1024, D=512, rounded to 5e6 (``benchmarks/gd_calibration.py`` measures the ratio).
For another global batch or teacher size use :func:`gd_weight_for`.
"""


def gd_weight_for(batch: int, teacher_dim: int) -> float:
    """GD weight that keeps lambda*GD at the task loss's size at initialisation for global batch ``batch``, dim D."""
    return GD_WEIGHT * (batch / 1024) ** 2 * (teacher_dim / 512) * math.log(batch) / math.log(1024)


@dataclass(frozen=True)
class Recipe:
    """A named method: ``weights`` for the loss combiner and the student's MFD ``mask_ratio``."""

    name: str
    weights: dict[str, float]
    summary: str
    mask_ratio: float = 0.0


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe("baseline", {"task": 1.0}, "student trained alone with the CLIP loss (no teacher)"),
        Recipe("crd", {"task": 1.0, "crd": 1.0}, "task + contrastive relational distillation"),
        Recipe("fd", {"task": 1.0, "fd": 2000.0}, "task + feature distillation"),
        Recipe("mfd", {"task": 1.0, "fd": 2000.0}, "FD with 75% of the student's image masked", mask_ratio=0.75),
        Recipe("gd", {"task": 1.0, "gd": GD_WEIGHT}, "task + gradient distillation (weight for N=1024, D=512)"),
        Recipe("icl", {"task": 1.0, "icl": 1.0}, "task + interactive contrastive learning"),
        Recipe("afd", {"task": 1.0, "afd": 1.0}, "task + augmented feature distillation"),
        Recipe("clipkd", {"task": 1.0, "crd": 1.0, "icl": 1.0, "fd": 2000.0}, "the paper's unified CLIP-KD method"),
    ]
}


def get_recipe(name: str) -> Recipe:
    """A recipe by name, with a clear error for unknown names."""
    if name not in RECIPES:
        raise KeyError(f"unknown recipe '{name}' (known: {', '.join(RECIPES)})")
    recipe = RECIPES[name]
    validate_weights(recipe.weights)
    return recipe
