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

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, RandomResizedCrop
from torchvision.transforms import Resize as TvResize

from clipkd.data.stages import stage
from clipkd.data.tensor_views import TensorPreprocess, resized_size, tensor_preprocess
from clipkd.embeddings import TextBatch
from clipkd.models.encoders import ClipEncoder

CropBox = tuple[int, int, int, int]  # top, left, height, width


def sample_crop(image, scale: Sequence[float], rng: random.Random) -> CropBox:
    """A RandomResizedCrop box (aspect ratio in [3/4, 4/3]) drawn from ``rng`` (reproducible); ``image``: anything
    with a PIL-style ``size`` (width, height)."""
    width, height = image.size
    image = torch.empty((3, height, width), device="meta")  # only its size is read
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


Resize = tuple[int, int]  # (the shorter side's size, PIL's resampling filter)


def leading_resize(preprocess) -> Optional[Resize]:
    """The square resize a torchvision/open_clip preprocessing starts with (``Resize(S)``: shorter side to S,
    bicubic or bilinear), or None when it starts otherwise."""
    first = (getattr(preprocess, "transforms", None) or [None])[0]
    if not isinstance(first, TvResize) or first.max_size is not None:
        return None
    size = first.size if isinstance(first.size, int) else (first.size[0] if len(first.size) == 1 else None)
    resample = {InterpolationMode.BICUBIC: Image.BICUBIC, InterpolationMode.BILINEAR: Image.BILINEAR}.get(
        first.interpolation)
    return (size, resample) if size and resample is not None else None


def _scaled_region(image: Image.Image, crop: CropBox, scale: float, resize: Optional[Resize]) -> Image.Image:
    """The region ``crop`` (source pixels) of ``image`` decoded at ``scale``: resized from the exact region to the
    size the side's own first resize gives the full-resolution crop (which then leaves it as it is); without a
    known first resize, resampled from the exact region to its size in the decoded pixels."""
    top, left, height, width = (v * scale for v in crop)
    box = (left, top, left + width, top + height)
    if resize is None:  # the exact region resampled to its size in the decoded pixels (not snapped to them)
        return image.resize((max(1, round(width)), max(1, round(height))), Image.BICUBIC, box=box)
    size, resample = resize
    out_h, out_w = resized_size(size, (crop[2], crop[3]))  # what Resize(S) makes of the full-resolution crop
    return image.resize((out_w, out_h), resample, box=box)


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
    deferred: Optional["DeviceSides"] = None  # images are uint8 regions [H, W, 3]; each side's view made on device
    aspect: Optional[tuple[int, int]] = None  # the region's height and width in the source's pixels


@dataclass(frozen=True)
class DeviceSides:
    """Each side's tensor preprocessing, for views made on the training device; ``teacher`` None: the student's
    view is the teacher's too; a tuple: one per ensemble teacher."""

    student: TensorPreprocess
    teacher: Union[TensorPreprocess, tuple[TensorPreprocess, ...], None]


@dataclass
class CachedTeacher:
    """A view's teacher embeddings read from reinforced data: ``img``/``txt`` [D] (ensembles: the teachers'
    embeddings concatenated), the teachers' scale multipliers ``scale`` (0-d, or [T] for T > 1 teachers) and their
    logit biases ``bias`` (None when no teacher has one; [T] with NaN for a teacher without one)."""

    img: torch.Tensor
    txt: torch.Tensor
    scale: torch.Tensor
    bias: Optional[torch.Tensor] = None


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
                 crop_scale: Optional[Sequence[float]] = (0.9, 1.0), reduced_decode: bool = False,
                 on_device: bool = False):
        self.student_pp, self.student_tok = student.preprocess_val, student.tokenizer
        self.ensemble = None if isinstance(teacher, ClipEncoder) else list(teacher)
        if self.ensemble is not None:  # each teacher its own view and tokens: tuples, in teacher order
            self.teacher_pp, self.teacher_tok = self._ensemble_views, self._ensemble_tokens
        else:
            self.teacher_pp, self.teacher_tok = teacher.preprocess_val, teacher.tokenizer
        self.same_image = self.ensemble is None and _signature(student) == _signature(teacher)
        self.same_text = self.student_tok is self.teacher_tok  # one encoder on both sides (no teacher)
        self.crop_scale = tuple(crop_scale) if crop_scale else None
        self.student_resize = leading_resize(student.preprocess_val)
        teachers = self.ensemble or [teacher]
        self.teacher_resizes = [leading_resize(t.preprocess_val) for t in teachers]
        # the view's resolution, or its first resize when that is larger (e.g. Resize(256) then CenterCrop(224))
        sides = [max(*e.image_size, *((r[0],) if r else ())) for e, r in
                 zip([student, *teachers], [self.student_resize, *self.teacher_resizes])]
        # a JPEG view needs this many pixels on its region's shorter side: decoded at a reduced scale down to it
        self.view_side = max(sides)  # the most pixels a side needs on the region's shorter side
        self.decode_side: Optional[int] = self.view_side if reduced_decode else None
        self.device_sides = (_device_sides(student, teachers, self.same_image, self.ensemble is not None)
                             if on_device else None)

    @property
    def on_device(self) -> bool:
        """Whether the views ship 8-bit regions and are made on the training device (:mod:`.tensor_views`)."""
        return self.device_sides is not None

    def _ensemble_views(self, image: Image.Image) -> tuple[torch.Tensor, ...]:
        return tuple(t.preprocess_val(image) for t in self.ensemble)

    def _teacher_views(self, image: Image.Image, crop: CropBox, scale: float):
        """Each teacher's view of the region of a reduced decode, from its own first resize of the exact region."""
        if self.ensemble is None:
            return self.teacher_pp(_scaled_region(image, crop, scale, self.teacher_resizes[0]))
        return tuple(t.preprocess_val(_scaled_region(image, crop, scale, r))
                     for t, r in zip(self.ensemble, self.teacher_resizes))

    def _ensemble_tokens(self, texts: Sequence[str]) -> tuple[TextBatch, ...]:
        return tuple(t.tokenizer(texts) for t in self.ensemble)

    def draw(self, image: Image.Image, rng: Optional[random.Random]) -> Optional[CropBox]:
        """The shared crop box of one sample (None: no augmentation); ``image`` may be opened but not decoded."""
        return sample_crop(image, self.crop_scale, rng) if (self.crop_scale and rng is not None) else None

    def __call__(self, image: Image.Image, caption: str, rng: Optional[random.Random]) -> SampleViews:
        return self.at(image, caption, self.draw(image, rng))

    def at(self, image: Image.Image, caption: str, crop: Optional[CropBox], scale: float = 1.0) -> SampleViews:
        """Both sides' views of the region ``crop`` (top, left, height, width, in the source's pixels) of ``image``
        decoded at ``scale`` of the source's size; None: all of it."""
        if self.device_sides is not None:
            return self._deferred(image, caption, crop, scale)
        with stage("preprocess"):
            if crop is None or scale == 1.0:
                s_in = crop_region(image, crop) if crop is not None else image
                s_img = self.student_pp(s_in)
                t_img = s_img if self.same_image else self.teacher_pp(s_in)
            else:  # a reduced decode: each side's (each teacher's) first resize from the exact, sub-pixel region
                s_img = self.student_pp(_scaled_region(image, crop, scale, self.student_resize))
                t_img = s_img if self.same_image else self._teacher_views(image, crop, scale)
        return SampleViews(s_img, t_img, *self._tokens(caption), crop)

    def _tokens(self, caption: str) -> tuple[TextBatch, TextBatch]:
        with stage("tokenize"):
            s_txt = _first(self.student_tok([caption]))
            t_txt = s_txt if self.same_text else _first(self.teacher_tok([caption]))
        return s_txt, t_txt

    def _deferred(self, image, caption: str, crop: Optional[CropBox], scale: float) -> SampleViews:
        """The region's 8-bit pixels (``image``: a PIL image or an array [H, W, 3]) for the device to make every
        side's view from (a reduced decode's region snapped to its decoded pixels)."""
        with stage("preprocess"):
            pixels = np.asarray(image)
            height, width = pixels.shape[:2]
            box = crop if crop is not None else (0, 0, round(height / scale), round(width / scale))
            top, left, h, w = _snapped(box, scale)
            region = _bounded(pixels[top:top + h, left:left + w], self.view_side)
            if not (region.flags.c_contiguous and region.flags.writeable):
                region = region.copy()
            region = torch.from_numpy(region)
        s_txt, t_txt = self._tokens(caption)
        return SampleViews(region, region, s_txt, t_txt, crop, deferred=self.device_sides, aspect=(box[2], box[3]))


MAX_SHIPPED = 4  # a region ships with at most this many times the view's pixels on its shorter side


def _bounded(region: np.ndarray, side: int) -> np.ndarray:
    """``region`` [H, W, 3], box-filtered by an integer factor (PIL's ``reduce``) when its shorter side is at least
    ``MAX_SHIPPED`` x ``side``: to between 2x and 4x the view's side. A PNG, a full decode or more than 1/8 of a
    JPEG would otherwise ship every pixel (memory in the loader's queue, bytes to copy, and a GPU's antialiased
    filter has a limit on its ratio)."""
    factor = min(region.shape[:2]) // (MAX_SHIPPED // 2 * side)
    if factor < 2:
        return region
    return np.asarray(Image.fromarray(region).reduce(factor))


def _snapped(box: CropBox, scale: float) -> CropBox:
    """The box (source pixels) in the pixels of an image decoded at ``scale``, its edges rounded to them."""
    if scale == 1.0:
        return box
    top, left = round(box[0] * scale), round(box[1] * scale)
    bottom, right = round((box[0] + box[2]) * scale), round((box[1] + box[3]) * scale)
    return top, left, max(1, bottom - top), max(1, right - left)


def _device_sides(student: ClipEncoder, teachers: Sequence[ClipEncoder], same_image: bool,
                  ensemble: bool) -> DeviceSides:
    """Each side's tensor preprocessing; ValueError naming a side whose preprocessing has no tensor form."""
    def parse(enc: ClipEncoder, side: str) -> TensorPreprocess:
        pre = tensor_preprocess(enc.preprocess_val)
        if pre is None:
            raise ValueError(f"data.preprocess: device needs Resize, CenterCrop, ToTensor and Normalize; the {side}'s "
                             f"preprocessing is {enc.preprocess_val!r} (use data.preprocess: host)")
        return pre

    s = parse(student, "student")
    t = None if same_image else tuple(parse(e, f"teacher {i}") for i, e in enumerate(teachers))
    return DeviceSides(s, t if t is None or ensemble else t[0])


def collate_text(items: list[TextBatch]) -> TextBatch:
    """Stack per-sample token tensors (or dicts of them; an ensemble: tuples of them) into a batch."""
    if isinstance(items[0], tuple):
        return tuple(collate_text([it[t] for it in items]) for t in range(len(items[0])))
    if isinstance(items[0], torch.Tensor):
        return torch.stack(items)
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}
