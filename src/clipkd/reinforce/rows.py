"""One raw record -> its fingerprint, crop boxes and each teacher's input views and tokens (or why unusable).

The same decoding and skip reasons as training (:func:`clipkd.data.decode.unusable_reason`,
:func:`clipkd.data.decode.open_image`); each view is the replayed crop through the teacher's ``preprocess_val``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from clipkd.data.decode import UnusableImage, open_image, read_image_bytes, unusable_reason
from clipkd.data.sources import RawSample
from clipkd.data.views import CropBox, crop_region
from clipkd.embeddings import TextBatch
from clipkd.models.encoders import ClipEncoder
from clipkd.reinforce.fingerprint import fingerprint
from clipkd.reinforce.views import view_boxes


@dataclass
class PreparedRow:
    """``reason`` None: usable, with ``crops`` (K boxes), ``images[t]`` [K, 3, H, W] and ``tokens[t]`` per teacher."""

    fingerprint: bytes
    reason: Optional[str] = None
    crops: list[CropBox] = field(default_factory=list)
    images: list[torch.Tensor] = field(default_factory=list)
    tokens: list[TextBatch] = field(default_factory=list)


@dataclass(frozen=True)
class ViewSpec:
    """How views are drawn: the build seed, ``data.crop_scale``, K and the pixel limit."""

    seed: int
    crop_scale: Optional[tuple[float, float]]
    views: int
    max_pixels: Optional[int] = None


def record_bytes(raw: RawSample) -> tuple[bytes, Optional[str]]:
    """(image bytes, or b"" when there are none; why none, or None)."""
    if raw.image is None:
        return b"", None
    try:
        return read_image_bytes(raw.image), None
    except UnusableImage as exc:
        return b"", exc.reason


def record_fingerprint(raw: RawSample) -> bytes:
    """The fingerprint of a record as stored in its sidecar."""
    return fingerprint(record_bytes(raw)[0], raw.caption)


def _one(tokens: TextBatch) -> TextBatch:
    return tokens[0] if isinstance(tokens, torch.Tensor) else {k: v[0] for k, v in tokens.items()}


def prepare_row(raw: RawSample, teachers: Sequence[ClipEncoder], spec: ViewSpec) -> PreparedRow:
    """Fingerprint, crops and teacher inputs of one record; unusable records keep their fingerprint and reason."""
    data, read_problem = record_bytes(raw)
    row = PreparedRow(fingerprint(data, raw.caption))
    row.reason = unusable_reason(raw) or read_problem
    if row.reason:
        return row
    try:
        image = open_image(data, spec.max_pixels)
    except UnusableImage as exc:
        row.reason = exc.reason
        return row
    except Exception:  # noqa: BLE001 - as in training: any other decoder failure is skipped and counted
        row.reason = "bad_image"
        return row
    row.crops = view_boxes(image, spec.crop_scale, spec.seed, row.fingerprint, spec.views)
    crops = [crop_region(image, box) for box in row.crops]
    row.images = [torch.stack([t.preprocess_val(c) for c in crops]) for t in teachers]
    row.tokens = [_one(t.tokenizer([raw.caption])) for t in teachers]
    return row
