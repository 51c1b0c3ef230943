"""One raw sample -> a student view and a teacher view (each side's own preprocessing and tokenizer).

Training augmentation is a random resized crop drawn ONCE per sample and shared by both sides, then each
side applies its own deterministic preprocessing (resize to its resolution, centre crop, its normalisation).
The teacher therefore describes exactly the region the student sees, whatever their resolutions; the crop
box is returned so it can be replayed later; reinforced data (:mod:`clipkd.reinforce`) stores boxes and replays
them with :meth:`PairedViews.at`.
When both sides' preprocessing is identical the tensor is computed once and shared.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from PIL import Image
from torchvision.transforms import RandomResizedCrop

from clipkd.data.stages import stage
from clipkd.embeddings import TextBatch
from clipkd.models.encoders import ClipEncoder

CropBox = tuple[int, int, int, int]  # top, left, height, width


def sample_crop(image: Image.Image, scale: Sequence[float], rng: random.Random) -> CropBox:
    """A RandomResizedCrop box (aspect ratio in [3/4, 4/3]) drawn from ``rng`` (reproducible)."""
    cpu = torch.default_generator  # only the CPU generator: torch.manual_seed would also (re)seed every CUDA
    state = cpu.get_state()  # device's generator, and costs ~0.2 ms recording a stack trace on a CUDA build
    try:
        cpu.manual_seed(rng.getrandbits(62))
        return tuple(RandomResizedCrop.get_params(image, list(scale), [3 / 4, 4 / 3]))  # type: ignore[return-value]
    finally:
        cpu.set_state(state)


def crop_region(image: Image.Image, box: CropBox) -> Image.Image:
    """The region ``box`` (top, left, height, width) of ``image``."""
    top, left, height, width = box
    return image.crop((left, top, left + width, top + height))


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
    teacher: Optional["CachedTeacher"] = None  # the teacher's stored embeddings of this view (reinforced data)


@dataclass
class CachedTeacher:
    """A view's teacher embeddings read from reinforced data: ``img``/``txt`` [D] (ensembles: the teachers'
    embeddings concatenated) and the teachers' scale multipliers ``scale`` (0-d, or [T] for T > 1 teachers)."""

    img: torch.Tensor
    txt: torch.Tensor
    scale: torch.Tensor


def _first(tokens):
    """The first sample of a token batch (a tensor or a mapping), or of each entry of an ensemble's tuple."""
    if isinstance(tokens, tuple):
        return tuple(_first(t) for t in tokens)
    if isinstance(tokens, torch.Tensor):
        return tokens[0]
    return {k: v[0] for k, v in tokens.items()}


class PairedViews:
    """Builds both sides' views of a decoded image and its caption."""

    def __init__(self, student: ClipEncoder, teacher: Union[ClipEncoder, Sequence[ClipEncoder]],
                 crop_scale: Optional[Sequence[float]] = (0.9, 1.0)):
        self.student_pp, self.student_tok = student.preprocess_val, student.tokenizer
        self.ensemble = None if isinstance(teacher, ClipEncoder) else list(teacher)
        if self.ensemble is not None:  # each teacher its own view and tokens: tuples, in teacher order
            self.teacher_pp, self.teacher_tok = self._ensemble_views, self._ensemble_tokens
        else:
            self.teacher_pp, self.teacher_tok = teacher.preprocess_val, teacher.tokenizer
        self.same_image = self.ensemble is None and _signature(student) == _signature(teacher)
        self.same_text = self.student_tok is self.teacher_tok  # one encoder on both sides (no teacher)
        self.crop_scale = tuple(crop_scale) if crop_scale else None

    def _ensemble_views(self, image: Image.Image) -> tuple[torch.Tensor, ...]:
        return tuple(t.preprocess_val(image) for t in self.ensemble)

    def _ensemble_tokens(self, texts: Sequence[str]) -> tuple[TextBatch, ...]:
        return tuple(t.tokenizer(texts) for t in self.ensemble)

    def __call__(self, image: Image.Image, caption: str, rng: Optional[random.Random]) -> SampleViews:
        crop = sample_crop(image, self.crop_scale, rng) if (self.crop_scale and rng is not None) else None
        return self.at(image, caption, crop)

    def at(self, image: Image.Image, caption: str, crop: Optional[CropBox]) -> SampleViews:
        """Both sides' views of the region ``crop`` (top, left, height, width) of ``image``; None: all of it."""
        with stage("preprocess"):
            if crop is not None:
                image = crop_region(image, crop)
            s_img = self.student_pp(image)
            t_img = s_img if self.same_image else self.teacher_pp(image)
        with stage("tokenize"):
            s_txt = _first(self.student_tok([caption]))
            t_txt = s_txt if self.same_text else _first(self.teacher_tok([caption]))
        return SampleViews(s_img, t_img, s_txt, t_txt, crop)


def collate_text(items: list[TextBatch]) -> TextBatch:
    """Stack per-sample token tensors (or dicts of them; an ensemble: tuples of them) into a batch."""
    if isinstance(items[0], tuple):
        return tuple(collate_text([it[t] for it in items]) for t in range(len(items[0])))
    if isinstance(items[0], torch.Tensor):
        return torch.stack(items)
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}
