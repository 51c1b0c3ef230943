"""One raw record -> both sides' views, or the reason it is unusable; views -> a batch.

Shared by the training stream (:mod:`clipkd.data.stream`) and held-out evaluation (:mod:`clipkd.data.heldout`),
so both skip and count the same records for the same reasons.
"""

from __future__ import annotations

import random
from typing import Optional, Sequence, Union

import torch

from clipkd.data.batch import DistillBatch
from clipkd.data.sources import RawSample, UnusableImage, open_image
from clipkd.data.views import PairedViews, SampleViews, collate_text
from clipkd.embeddings import Embeddings

__all__ = ["unusable_reason", "decode_record", "collate_views"]


def unusable_reason(raw: RawSample) -> Optional[str]:
    """Why a record cannot be used before decoding, or None."""
    if raw.error:
        return raw.error
    if raw.image is None:
        return "missing_image"
    if raw.caption is None:
        return "missing_caption"
    if not raw.caption.strip():
        return "empty_caption"
    return None


def decode_record(raw: RawSample, views: PairedViews, rng: Optional[random.Random] = None,
                  max_pixels: Optional[int] = None) -> Union[SampleViews, str]:
    """Both sides' views of one record (augmented when ``rng`` is given), or why it is unusable."""
    reason = unusable_reason(raw)
    if reason:
        return reason
    try:
        image = open_image(raw.image, max_pixels)
    except UnusableImage as exc:
        return exc.reason
    except Exception:  # noqa: BLE001 - any other decoder failure means the same: skip and count
        return "bad_image"
    out = views(image, raw.caption, rng)
    out.key = raw.key
    return out


def collate_views(views: Sequence[SampleViews]) -> DistillBatch:
    """Stack samples into a batch; when every sample shares one image tensor per side, so does the batch."""
    s_img = torch.stack([v.student_image for v in views])
    shared = all(v.teacher_image is v.student_image for v in views)
    return DistillBatch(
        student_images=s_img,
        student_text=collate_text([v.student_text for v in views]),
        teacher_images=s_img if shared else collate_text([v.teacher_image for v in views]),
        teacher_text=collate_text([v.teacher_text for v in views]),
        keys=[v.key for v in views],
        teacher=_stored_teacher(views),
    )


def _stored_teacher(views: Sequence[SampleViews]) -> Optional[Embeddings]:
    """The views' stored teacher embeddings as a batch (reinforced data), or None when they carry none."""
    if views[0].teacher is None:
        return None
    return Embeddings(torch.stack([v.teacher.img for v in views]), torch.stack([v.teacher.txt for v in views]),
                      views[0].teacher.scale)
