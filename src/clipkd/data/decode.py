"""Image bytes -> an RGB image, or the reason it is unusable; one raw record -> both sides' views; views -> a batch.

Shared by the training stream (:mod:`clipkd.data.stream`) and held-out evaluation (:mod:`clipkd.data.heldout`),
so both skip and count the same records for the same reasons.
"""

from __future__ import annotations

import io
import math
import random
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch

from clipkd.data.batch import DistillBatch
from clipkd.data.sources import RawSample
from clipkd.data.stages import stage
from clipkd.data.tensor_views import DeferredViews, PackedImages
from clipkd.data.views import CropBox, PairedViews, SampleViews, collate_text
from clipkd.embeddings import Embeddings

__all__ = ["UnusableImage", "read_image_bytes", "to_rgb", "open_image", "open_region", "open_pixels", "open_for",
           "unusable_reason", "decode_record",
           "collate_views"]


class UnusableImage(ValueError):
    """An image that cannot be used; ``reason`` is the count it goes to (``missing_file``, ``too_large``...)."""

    def __init__(self, reason: str, what: str, detail: object = ""):
        super().__init__(f"{what}: {reason.replace('_', ' ')}" + (f" ({detail})" if detail else ""))
        self.reason = reason


def read_image_bytes(image: Union[bytes, Path]) -> bytes:
    """Bytes of an image, from a shard member or a file; ``UnusableImage`` when there are none."""
    if isinstance(image, bytes):
        data = image
    else:
        try:
            data = Path(image).read_bytes()
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise UnusableImage("missing_file", str(image), exc.strerror) from None
        except OSError as exc:
            raise UnusableImage("unreadable_file", str(image), exc.strerror or exc) from None
    if not data:
        raise UnusableImage("empty_file", "image" if isinstance(image, bytes) else str(image))
    return data


@contextmanager
def _pixel_limit(max_pixels: Optional[int]):
    """PIL's decompression-bomb limit set to ``max_pixels`` (its own default when None), warnings silenced."""
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    if max_pixels is not None:
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _decode_reason(exc: Exception) -> str:
    """The skip reason of a decoder failure."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(exc, Image.DecompressionBombError):
        return "too_large"
    if isinstance(exc, UnidentifiedImageError):
        return "bad_image"
    if isinstance(exc, EOFError) or (isinstance(exc, OSError) and "truncat" in str(exc).lower()):
        return "truncated_image"
    return "bad_image"


def to_rgb(im):
    """8-bit RGB: 16-bit greyscale scaled (not clipped), transparency composited on white, others converted."""
    from PIL import Image

    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        import numpy as np

        arr = np.asarray(im, dtype=np.float64) * (255.0 / 65535.0)
        im = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def open_image(image: Union[bytes, Path], max_pixels: Optional[int] = None):
    """Decode fully into an RGB PIL image.

    Raises :class:`UnusableImage` with a ``reason``: ``missing_file``, ``unreadable_file``, ``empty_file``,
    ``too_large`` (more than ``max_pixels`` pixels, or PIL's own bomb limit when None), ``truncated_image``
    or ``bad_image``.
    """
    return open_region(image, lambda opened: None, None, max_pixels)[0]


def _reduced(im, region: tuple[int, int], min_side: int) -> float:
    """Let a JPEG decode at the smallest DCT scale (1/2, 1/4, 1/8: libjpeg's scaled IDCT, Pillow's ``draft``) that
    still gives the region (height, width) a shorter side of at least ``min_side``; the scale decoded at (1: full)."""
    factor = min(region) / min_side
    if im.format not in ("JPEG", "MPO") or factor < 2:  # MPO: a phone's JPEG with a multi-picture segment
        return 1.0
    width, height = im.size
    found = im.draft("RGB", (math.ceil(width / factor), math.ceil(height / factor)))
    return 1.0 if found is None else found[1][2] / width


def open_region(image: Union[bytes, Path], pick: Callable[[Any], Optional[CropBox]], min_side: Optional[int] = None,
                max_pixels: Optional[int] = None) -> tuple[Any, float]:
    """Decode ``image`` for a view of one region: ``pick(opened)`` names the region (top, left, height, width) in the
    source's pixels from the opened, not yet decoded image (its size and bands), or None for all of it.

    With ``min_side`` (the view's resolution), a JPEG whose region is at least twice that on its shorter side is
    decoded at a reduced scale (:func:`_reduced`): 4x to 64x fewer pixels to decode and to resize. Returns the RGB
    image and the scale it was decoded at (1.0: full); the region in its pixels is the source's box times the scale
    (:meth:`clipkd.data.views.PairedViews.at` takes the source's box and the scale).
    Raises :class:`UnusableImage` as :func:`open_image` does.
    """
    from PIL import Image

    data = read_image_bytes(image)
    what = "image" if isinstance(image, bytes) else str(image)
    try:
        with _pixel_limit(max_pixels), Image.open(io.BytesIO(data)) as im:
            if max_pixels is not None and im.width * im.height > max_pixels:
                raise UnusableImage("too_large", what, f"{im.width}x{im.height} > {max_pixels} pixels")
            box = pick(im)
            region = (box[2], box[3]) if box is not None else (im.height, im.width)
            scale = _reduced(im, region, min_side) if min_side else 1.0
            im.load()
            return to_rgb(im), scale
    except UnusableImage:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure: classified, then skipped and counted
        raise UnusableImage(_decode_reason(exc), what, exc) from None


class _Header:
    """A JPEG's size read from its header (what ``pick`` needs of an opened image)."""

    def __init__(self, height: int, width: int):
        self.size, self.height, self.width = (width, height), height, width


def _turbo_region(data: bytes, pick: Callable[[Any], Optional[CropBox]], min_side: Optional[int],
                  max_pixels: Optional[int], what: str):
    """A baseline or progressive JPEG decoded by libjpeg-turbo straight into 8-bit RGB (``simplejpeg``), at the
    scale :func:`_reduced` would pick; raises ValueError for what it cannot decode cleanly (damaged data)."""
    import simplejpeg
    from PIL import Image

    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    limit = max_pixels if max_pixels is not None else 2 * (Image.MAX_IMAGE_PIXELS or 2 ** 62)
    if width * height > limit:
        raise UnusableImage("too_large", what, f"{width}x{height} > {limit} pixels")
    box = pick(_Header(height, width))
    region = (box[2], box[3]) if box is not None else (height, width)
    factor = 1
    while min_side and factor < 8 and min(region) / (2 * factor) >= min_side:
        factor *= 2
    pixels = simplejpeg.decode_jpeg(data, "rgb", min_height=math.ceil(height / factor),
                                    min_width=math.ceil(width / factor), min_factor=factor)
    if pixels.shape[:2] != (math.ceil(height / factor), math.ceil(width / factor)):
        raise ValueError(f"decoded at {pixels.shape[:2]}, not 1/{factor} of {height}x{width}")
    return pixels, 1.0 / factor  # exactly, as PIL's draft: the last DCT block may be partial (ceil), the scale not


def open_pixels(image: Union[bytes, Path], pick: Callable[[Any], Optional[CropBox]], min_side: Optional[int] = None,
                max_pixels: Optional[int] = None) -> tuple[Any, float]:
    """:func:`open_region` as 8-bit RGB pixels (a numpy array [H, W, 3]) and the scale decoded at: a JPEG goes
    straight from libjpeg-turbo into the array (``simplejpeg``: no PIL image, about a third faster than PIL's
    decode), anything else, and any JPEG it refuses (damaged data: PIL then decides and counts), through PIL.
    ``pick`` is called once, with an object that has the image's ``size`` (width, height)."""
    import numpy as np

    data = read_image_bytes(image)
    what = "image" if isinstance(image, bytes) else str(image)
    if data[:3] == b"\xff\xd8\xff":
        drawn: list = []

        def once(opened) -> Optional[CropBox]:
            if not drawn:
                drawn.append(pick(opened))
            return drawn[0]

        try:
            return _turbo_region(data, once, min_side, max_pixels, what)
        except UnusableImage:
            raise
        except Exception:  # noqa: BLE001 - PIL decodes it or says why it cannot
            pick = once
    im, scale = open_region(data, pick, min_side, max_pixels)
    return np.asarray(im), scale


def open_for(views: PairedViews, image: Union[bytes, Path], pick: Callable[[Any], Optional[CropBox]],
             max_pixels: Optional[int] = None) -> tuple[Any, float]:
    """``image`` decoded as ``views`` take it: an array (:func:`open_pixels`) for views made on the device, a PIL
    image (:func:`open_region`) otherwise; at a reduced scale where they allow it."""
    opener = open_pixels if views.on_device else open_region
    return opener(image, pick, views.decode_side, max_pixels)


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
    drawn: list = [None, (0, 0)]

    def pick(opened) -> Optional[CropBox]:
        drawn[0], drawn[1] = views.draw(opened, rng), opened.size  # the same box at any decoding scale
        return drawn[0]

    try:
        with stage("decode"):
            image, scale = open_for(views, raw.image, pick, max_pixels)
    except UnusableImage as exc:
        return exc.reason
    except Exception:  # noqa: BLE001 - any other decoder failure means the same: skip and count
        return "bad_image"
    width, height = drawn[1]
    region = drawn[0] if drawn[0] is not None or scale == 1.0 else (0, 0, height, width)  # all of it, exactly
    out = views.at(image, raw.caption, region, scale)
    out.key, out.crop = raw.key, drawn[0]
    return out


def collate_views(views: Sequence[SampleViews]) -> DistillBatch:
    """Stack samples into a batch; when every sample shares one image tensor per side, so does the batch. Views to
    be made on the device (:attr:`SampleViews.deferred`) pack their regions into one buffer for both sides."""
    if views[0].deferred is not None:
        s_img, t_img = _deferred_images(views)
    else:
        s_img = torch.stack([v.student_image for v in views])
        shared = all(v.teacher_image is v.student_image for v in views)
        t_img = s_img if shared else collate_text([v.teacher_image for v in views])
    return DistillBatch(
        student_images=s_img,
        student_text=collate_text([v.student_text for v in views]),
        teacher_images=t_img,
        teacher_text=collate_text([v.teacher_text for v in views]),
        keys=[v.key for v in views],
        teacher=_stored_teacher(views),
    )


def _deferred_images(views: Sequence[SampleViews]):
    """Both sides' :class:`DeferredViews` over one :class:`PackedImages` of the samples' regions."""
    sides = views[0].deferred
    packed = PackedImages.pack([v.student_image for v in views], [v.aspect for v in views])
    student = DeferredViews(packed, sides.student)
    if sides.teacher is None:
        return student, student
    if isinstance(sides.teacher, tuple):
        return student, tuple(DeferredViews(packed, t) for t in sides.teacher)
    return student, DeferredViews(packed, sides.teacher)


def _stored_teacher(views: Sequence[SampleViews]) -> Optional[Embeddings]:
    """The views' stored teacher embeddings as a batch (reinforced data), or None when they carry none."""
    if views[0].teacher is None:
        return None
    return Embeddings(torch.stack([v.teacher.img for v in views]), torch.stack([v.teacher.txt for v in views]),
                      views[0].teacher.scale, views[0].teacher.bias)
