"""CLIP-KD objectives: pure formulas (:mod:`.functional`), registered terms, their weighted sum, recipes.

Names load on first use (PEP 562): :mod:`.catalog` (term names, equations, weight checks) and :mod:`.recipes`
import no torch, so config validation and ``clipkd losses`` start fast; ``TERMS``, ``DistillLoss`` and the
formulas bring torch in.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "DistillLoss": "combine",
    "validate_weights": "catalog",
    "RECIPES": "recipes",
    "Recipe": "recipes",
    "get_recipe": "recipes",
    "gd_weight_for": "recipes",
    "resolve_weights": "recipes",
    "TERMS": "terms",
    "LossTerm": "terms",
    "create_term": "terms",
    "register_term": "terms",
}

__all__ = [
    "DistillLoss", "validate_weights", "RECIPES", "Recipe", "get_recipe", "gd_weight_for", "resolve_weights",
    "TERMS", "LossTerm", "create_term", "register_term",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    from clipkd.losses.catalog import validate_weights
    from clipkd.losses.combine import DistillLoss
    from clipkd.losses.recipes import RECIPES, Recipe, gd_weight_for, get_recipe, resolve_weights
    from clipkd.losses.terms import TERMS, LossTerm, create_term, register_term


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
