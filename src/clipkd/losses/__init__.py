"""CLIP-KD objectives: pure formulas (:mod:`.functional`), registered terms, their weighted sum, recipes."""

from clipkd.losses.combine import DistillLoss, validate_weights
from clipkd.losses.recipes import RECIPES, Recipe, get_recipe, gd_weight_for, resolve_weights
from clipkd.losses.terms import TERMS, LossTerm, create_term, register_term

__all__ = [
    "DistillLoss", "validate_weights", "RECIPES", "Recipe", "get_recipe", "gd_weight_for", "resolve_weights",
    "TERMS", "LossTerm", "create_term", "register_term",
]
