"""Named presets of the paper's methods: loss weights plus the MFD mask ratio."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Mapping, Optional

from clipkd.losses.catalog import validate_weights
from clipkd.suggest import did_you_mean

logger = logging.getLogger(__name__)

GD_REF_BATCH = 1024
GD_REF_DIM = 512
GD_WEIGHT = 5e6
"""GD weight for the paper's setting (global batch N=1024, teacher dim D=512).

The official code used 1e8 because it fed the logit scale where a temperature belongs, which flattened the
softmax. With the formula fixed, GD = sum_k mean((G_k^s - G_k^t)^2) with G ~ (s/N)(P - I)E. At initialisation
the student's softmax is near uniform and a trained teacher's gradients are near zero, so
GD ~ 4 s_s^2 / (N^2 D) with s_s = 1/0.07, while the task loss is ~ln N. lambda = ln(N) N^2 D / (4 s_s^2) makes
them equal: 4.6e6 at N=1024, D=512, rounded to 5e6 (``benchmarks/gd_calibration.py`` measures the ratio).
A recipe's GD weight follows :func:`gd_weight_for` of the run's global batch and teacher size
(:func:`resolve_weights`); explicit weights are used as given.
"""


def gd_weight_for(batch: int, teacher_dim: int) -> float:
    """GD weight that keeps lambda*GD at the task loss's size at initialisation for global batch N, teacher dim D.

    ``lambda(N, D) = GD_WEIGHT * (N/1024)^2 * (D/512) * ln(N) / ln(1024)``
    """
    if batch < 2 or teacher_dim < 1:
        raise ValueError(f"gd_weight_for needs a global batch >= 2 and a teacher dim >= 1, got {batch}, {teacher_dim}")
    return (GD_WEIGHT * (batch / GD_REF_BATCH) ** 2 * (teacher_dim / GD_REF_DIM)
            * math.log(batch) / math.log(GD_REF_BATCH))


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
        Recipe("gd", {"task": 1.0, "gd": GD_WEIGHT},
               "task + gradient distillation (weight gd_weight_for(N, D); 5e6 at N=1024, D=512)"),
        Recipe("icl", {"task": 1.0, "icl": 1.0}, "task + interactive contrastive learning"),
        Recipe("afd", {"task": 1.0, "afd": 1.0}, "task + augmented feature distillation"),
        Recipe("clipkd", {"task": 1.0, "crd": 1.0, "icl": 1.0, "fd": 2000.0}, "the paper's unified CLIP-KD method"),
        # Sigmoid students (SigLIP): the task loss is the sigmoid one, CRD becomes sigmoid CRD; FD, ICL and AFD work
        # on embeddings with their own scales and need no bias. GD has no counterpart: it matches the softmax loss's
        # gradients, which a sigmoid student does not follow.
        Recipe("siglip", {"siglip": 1.0}, "sigmoid student trained alone with the SigLIP loss (no teacher)"),
        Recipe("siglip-crd", {"siglip": 1.0, "sigmoid_crd": 1.0},
               "SigLIP loss + sigmoid CRD (pairwise match probabilities)"),
        Recipe("siglip-fd", {"siglip": 1.0, "fd": 2000.0}, "SigLIP loss + feature distillation"),
        Recipe("siglip-mfd", {"siglip": 1.0, "fd": 2000.0}, "SigLIP FD with 75% of the student's image masked",
               mask_ratio=0.75),
        Recipe("siglip-icl", {"siglip": 1.0, "icl": 1.0}, "SigLIP loss + interactive contrastive learning"),
        Recipe("siglip-afd", {"siglip": 1.0, "afd": 1.0}, "SigLIP loss + augmented feature distillation"),
        Recipe("siglip-clipkd", {"siglip": 1.0, "sigmoid_crd": 1.0, "icl": 1.0, "fd": 2000.0},
               "the unified CLIP-KD method for a sigmoid student (sigmoid CRD in place of CRD)"),
    ]
}


def weights_text(weights: Mapping[str, float], named: Optional[Mapping[str, str]] = None) -> str:
    """A weighted sum as text: ``{"task": 1, "crd": 1, "icl": 0, "fd": 500}`` -> ``task + crd + 500*fd``.

    Terms with weight 0 are left out, a weight of 1 is not written, the others print in full (``%.10g``: a
    calibrated weight is not rounded); ``named`` writes a term's weight as a symbol (``{"gd": "lambda_GD"}``).
    No term at all is ``nothing``."""
    named = named or {}
    parts = [_weighted_term(t, w, named) for t, w in weights.items() if t in named or w > 0]
    return " + ".join(parts) or "nothing"


def _weighted_term(term: str, weight: float, named: Mapping[str, str]) -> str:
    if term in named:
        return f"{named[term]}*{term}"
    return term if weight == 1 else f"{weight:.10g}*{term}"


def unknown_recipe_message(name: str) -> str:
    """``unknown recipe 'x' (did you mean `y`? known: ...)``."""
    hint = did_you_mean(name, RECIPES)
    return f"unknown recipe '{name}' ({hint + ' ' if hint else ''}known: {', '.join(RECIPES)})"


def get_recipe(name: str) -> Recipe:
    """A recipe by name, with a clear error for unknown names."""
    if name not in RECIPES:
        raise KeyError(unknown_recipe_message(name))
    recipe = RECIPES[name]
    validate_weights(recipe.weights)
    return recipe


def resolve_weights(
    recipe_name: str,
    explicit_weights: Optional[Mapping[str, float]],
    global_batch: int = GD_REF_BATCH,
    teacher_dim: int = GD_REF_DIM,
) -> dict[str, float]:
    """The loss weights of a run: ``explicit_weights`` as given when set, else the recipe's.

    A recipe's GD weight (listed at the reference N=1024, D=512) becomes ``gd_weight_for(global_batch,
    teacher_dim)``, with ``global_batch`` = per-process batch x accumulation steps x processes.
    """
    if explicit_weights is not None:
        return validate_weights(explicit_weights)
    weights = dict(get_recipe(recipe_name).weights)
    if weights.get("gd", 0.0) > 0:
        weights["gd"] = gd_weight_for(global_batch, teacher_dim)
        logger.info("recipe '%s': GD weight %.6g = gd_weight_for(N=%d, D=%d) (global batch N, teacher dim D)",
                    recipe_name, weights["gd"], global_batch, teacher_dim)
    return weights
