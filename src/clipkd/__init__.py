"""clipkd: distil a large frozen CLIP teacher into a small student CLIP (CLIP-KD, Yang et al., CVPR 2024)."""

from clipkd.distill import DistillBatch, Distiller, build_distiller
from clipkd.losses import RECIPES, DistillLoss, get_recipe
from clipkd.models import ClipEncoder, DistillStudent, FrozenTeacher, create_open_clip_encoder

__version__ = "0.1.0"

__all__ = [
    "DistillBatch", "Distiller", "build_distiller", "RECIPES", "DistillLoss", "get_recipe",
    "ClipEncoder", "DistillStudent", "FrozenTeacher", "create_open_clip_encoder", "__version__",
]
