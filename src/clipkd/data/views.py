"""One raw sample -> a student view and a teacher view (each side's own preprocessing and tokenizer).

Training augmentation is a random resized crop drawn ONCE per sample and shared by both sides, then each
side applies its own deterministic preprocessing (resize to its resolution, centre crop, its normalisation).
The teacher therefore describes exactly the region the student sees, whatever their resolutions; the crop
box is returned so it can be replayed later (e.g. by a teacher-embedding cache).
When both sides' preprocessing is identical the tensor is computed once and shared.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from PIL import Image
from torchvision.transforms import RandomResizedCrop

from clipkd.models.encoders import ClipEncoder, TextBatch

CropBox = tuple[int, int, int, int]  # top, left, height, width


def sample_crop(image: Image.Image, scale: Sequence[float], rng: random.Random) -> CropBox:
    """A RandomResizedCrop box (aspect ratio in [3/4, 4/3]) drawn from ``rng`` (reproducible)."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(rng.getrandbits(62))
        return tuple(RandomResizedCrop.get_params(image, list(scale), [3 / 4, 4 / 3]))  # type: ignore[return-value]
    finally:
        torch.random.set_rng_state(state)


def _signature(enc: ClipEncoder) -> str:
    return repr(enc.preprocess_val)


@dataclass
class SampleViews:
    student_image: torch.Tensor
    teacher_image: torch.Tensor
    student_text: TextBatch
    teacher_text: TextBatch
    crop: Optional[CropBox]
    key: str = ""


def _first(tokens: TextBatch) -> TextBatch:
    if isinstance(tokens, torch.Tensor):
        return tokens[0]
    return {k: v[0] for k, v in tokens.items()}


class PairedViews:
    """Builds both sides' views of a decoded image and its caption."""

    def __init__(self, student: ClipEncoder, teacher: ClipEncoder, crop_scale: Optional[Sequence[float]] = (0.9, 1.0)):
        self.student_pp, self.teacher_pp = student.preprocess_val, teacher.preprocess_val
        self.student_tok, self.teacher_tok = student.tokenizer, teacher.tokenizer
        self.same_image = _signature(student) == _signature(teacher)
        self.same_text = self.student_tok is self.teacher_tok  # one encoder on both sides (no teacher)
        self.crop_scale = tuple(crop_scale) if crop_scale else None

    def __call__(self, image: Image.Image, caption: str, rng: Optional[random.Random]) -> SampleViews:
        crop = sample_crop(image, self.crop_scale, rng) if (self.crop_scale and rng is not None) else None
        if crop is not None:
            top, left, h, w = crop
            image = image.crop((left, top, left + w, top + h))
        s_img = self.student_pp(image)
        t_img = s_img if self.same_image else self.teacher_pp(image)
        s_txt = _first(self.student_tok([caption]))
        t_txt = s_txt if self.same_text else _first(self.teacher_tok([caption]))
        return SampleViews(s_img, t_img, s_txt, t_txt, crop)


def collate_text(items: list[TextBatch]) -> TextBatch:
    """Stack per-sample token tensors (or dicts of them) into a batch."""
    if isinstance(items[0], torch.Tensor):
        return torch.stack(items)
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}
