"""Augmentation records: the crop box of each stored view, drawn reproducibly (replayed with
:func:`clipkd.data.views.crop_region`).

Training's augmentation is one random resized crop per sample (:func:`clipkd.data.views.sample_crop`), shared
by both sides, then each side's deterministic ``preprocess_val``. View ``k`` of a sample is drawn from a
generator seeded by :func:`view_seed` (build seed, sample fingerprint, k): it does not depend on which process
built it or in what order.
"""

from __future__ import annotations

import hashlib
import random
from typing import Optional, Sequence

from PIL import Image

from clipkd.data.views import CropBox, sample_crop


def view_seed(seed: int, fingerprint: bytes, k: int) -> int:
    """First 8 bytes (big-endian) of SHA-256(``"clipkd-view:<seed>:"`` + fingerprint + k as 4 bytes big-endian)."""
    data = f"clipkd-view:{seed}:".encode() + fingerprint + k.to_bytes(4, "big")
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big")


def view_boxes(image: Image.Image, crop_scale: Optional[Sequence[float]], seed: int, fingerprint: bytes,
               views: int) -> list[CropBox]:
    """The crop boxes ``(top, left, height, width)`` of a sample's views; without ``crop_scale`` one view, the
    whole image."""
    if crop_scale is None:
        if views != 1:
            raise ValueError(f"without data.crop_scale there is one (un-augmented) view per sample, not {views}")
        return [(0, 0, image.height, image.width)]
    return [sample_crop(image, crop_scale, random.Random(view_seed(seed, fingerprint, k))) for k in range(views)]
