"""clipkd: distil a large frozen CLIP teacher into a small student CLIP (CLIP-KD, Yang et al., CVPR 2024).

The public names load on first use (PEP 562), so ``import clipkd`` (and every ``clipkd`` command that needs no
model: ``--help``, ``losses``, argument and config errors) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "DistillBatch": "clipkd.data.batch",
    "Distiller": "clipkd.distill",
    "build_distiller": "clipkd.distill",
    "RECIPES": "clipkd.losses.recipes",
    "get_recipe": "clipkd.losses.recipes",
    "DistillLoss": "clipkd.losses.combine",
    "ClipEncoder": "clipkd.models",
    "DistillStudent": "clipkd.models",
    "FrozenTeacher": "clipkd.models",
    "create_open_clip_encoder": "clipkd.models",
    "PairedViews": "clipkd.data.views",
    "collate_views": "clipkd.data.decode",
}

__all__ = [
    "DistillBatch", "Distiller", "build_distiller", "RECIPES", "DistillLoss", "get_recipe",
    "ClipEncoder", "DistillStudent", "FrozenTeacher", "create_open_clip_encoder", "PairedViews", "collate_views",
    "__version__",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    from clipkd.data.batch import DistillBatch
    from clipkd.data.decode import collate_views
    from clipkd.data.views import PairedViews
    from clipkd.distill import Distiller, build_distiller
    from clipkd.losses import RECIPES, DistillLoss, get_recipe
    from clipkd.models import ClipEncoder, DistillStudent, FrozenTeacher, create_open_clip_encoder


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
