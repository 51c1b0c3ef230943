"""One entry point for every encoder name clipkd knows: open_clip models and the composite LiT teacher."""

from __future__ import annotations

from typing import Optional, Sequence

from clipkd.models.composite import LIT_NAME, create_lit_encoder
from clipkd.models.encoders import ClipEncoder
from clipkd.models.open_clip_adapter import create_open_clip_encoder, list_models

COMPOSITE_MODELS = (LIT_NAME,)


def known_model(name: str) -> bool:
    return name in COMPOSITE_MODELS or name.startswith(("hf-hub:", "local-dir:")) or name in list_models()


def create_encoder(name: str, pretrained: Optional[str] = None, image_mean: Optional[Sequence[float]] = None,
                   image_std: Optional[Sequence[float]] = None) -> ClipEncoder:
    """``lit-effnetlite0-minilm`` (``pretrained`` = its trained heads) or any open_clip model."""
    if name == LIT_NAME:
        return create_lit_encoder(heads=pretrained)
    return create_open_clip_encoder(name, pretrained, image_mean=image_mean, image_std=image_std)
