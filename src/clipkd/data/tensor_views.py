"""A view's resize, centre crop and normalisation as tensor ops on the training device (``data.preprocess: device``).

Workers ship each sample's region as 8-bit pixels (:class:`PackedImages`: one flat buffer for the whole batch, so
one host-to-device copy, a quarter of float32's bytes); :meth:`DeferredViews.render` then resizes each region with
an antialiased filter (``torch.nn.functional.interpolate``, PIL's filters; on CPU its 8-bit path, which rounds like
PIL), crops the centre, normalises and casts, on whatever device the batch is on. Regions of one shape are resized
in one call. Only preprocessings of the usual form qualify (:func:`tensor_preprocess`): ``Resize(S)`` (bicubic or
bilinear), ``CenterCrop(C)`` with C <= S, conversion to RGB, to-tensor, ``Normalize``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ["TensorPreprocess", "tensor_preprocess", "PackedImages", "DeferredViews", "render"]

_PASS_THROUGH = {"MaybeConvertMode", "MaybeToTensor", "ToTensor", "_convert_to_rgb", "convert_to_rgb"}


@dataclass(frozen=True)
class TensorPreprocess:
    """Shorter side resized to ``size`` (``mode``: bicubic or bilinear, antialiased), centre ``crop``, then
    ``(x / 255 - mean) / std``."""

    size: int
    crop: int
    mode: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _int_size(size, square_pair: bool) -> Optional[int]:
    """An int size or a one-element sequence; with ``square_pair`` also (s, s) (a crop, not a resize: torchvision's
    ``Resize((s, s))`` squashes the image to s x s, unlike ``Resize(s)``)."""
    if isinstance(size, int):
        return size
    if len(size) == 1 or (square_pair and len(size) == 2 and size[0] == size[1]):
        return int(size[0])
    return None


def tensor_preprocess(preprocess) -> Optional[TensorPreprocess]:
    """The tensor form of a torchvision ``Compose`` (open_clip's ``preprocess_val``), or None when it has another
    form (then the view needs the host path, ``data.preprocess: host``)."""
    from torchvision.transforms import CenterCrop, InterpolationMode, Normalize, Resize

    steps = list(getattr(preprocess, "transforms", None) or [])
    if len(steps) < 3 or not isinstance(steps[0], Resize) or not isinstance(steps[1], CenterCrop):
        return None
    resize, crop, rest = steps[0], steps[1], steps[2:]
    modes = {InterpolationMode.BICUBIC: "bicubic", InterpolationMode.BILINEAR: "bilinear"}
    size, side = _int_size(resize.size, False), _int_size(crop.size, True)
    if resize.max_size is not None or resize.interpolation not in modes or not size or not side or side > size:
        return None
    if not isinstance(rest[-1], Normalize) or rest[-1].inplace:
        return None
    if any(getattr(s, "__name__", type(s).__name__) not in _PASS_THROUGH for s in rest[:-1]):
        return None
    norm = rest[-1]
    return TensorPreprocess(size, side, modes[resize.interpolation], tuple(map(float, norm.mean)),
                            tuple(map(float, norm.std)))


@dataclass
class PackedImages:
    """A batch of 8-bit RGB regions of any sizes: ``data`` all their pixels (height x width x 3 each, one after
    another), ``shapes`` each region's height and width, ``aspect`` the height and width of each region in the
    source's pixels (a region decoded at a reduced scale keeps the source's aspect rule). The sizes are plain
    integers: the host reads them without a transfer from the device."""

    data: torch.Tensor
    shapes: tuple[tuple[int, int], ...]
    aspect: tuple[tuple[int, int], ...]

    @classmethod
    def pack(cls, regions: Sequence[torch.Tensor], aspect: Sequence[tuple[int, int]]) -> "PackedImages":
        """``regions``: uint8 [H, W, 3] tensors."""
        shapes = tuple((int(r.shape[0]), int(r.shape[1])) for r in regions)
        return cls(torch.cat([r.reshape(-1) for r in regions]), shapes, tuple((int(h), int(w)) for h, w in aspect))

    def __len__(self) -> int:
        return len(self.shapes)

    def to(self, device, non_blocking: bool = False) -> "PackedImages":
        """The pixels on ``device`` (one copy); shapes stay on the host, where the render reads them."""
        return PackedImages(self.data.to(device, non_blocking=non_blocking), self.shapes, self.aspect)

    def pin_memory(self) -> "PackedImages":
        return PackedImages(self.data.pin_memory(), self.shapes, self.aspect)

    def regions(self) -> list[torch.Tensor]:
        """Each region as a [1, 3, H, W] view of ``data`` (channels-last memory, no copy)."""
        parts = torch.split(self.data, [h * w * 3 for h, w in self.shapes])
        return [p.view(1, h, w, 3).permute(0, 3, 1, 2) for p, (h, w) in zip(parts, self.shapes)]


def resized_size(size: int, aspect: tuple[int, int]) -> tuple[int, int]:
    """torchvision's ``Resize(size)`` of an image of ``aspect`` (height, width): the shorter side to ``size``."""
    h, w = aspect
    return (size, int(size * w / h)) if h <= w else (int(size * h / w), size)


def _centre(x: torch.Tensor, side: int) -> torch.Tensor:
    """torchvision's ``CenterCrop(side)`` of [N, C, H, W] (H, W >= side)."""
    h, w = x.shape[-2:]
    top, left = int(round((h - side) / 2.0)), int(round((w - side) / 2.0))
    return x[..., top:top + side, left:left + side]


def _resize(x: torch.Tensor, out: tuple[int, int], mode: str) -> torch.Tensor:
    """Antialiased resize of a [N, 3, H, W] uint8 batch (CPU: 8-bit arithmetic; elsewhere in float32, rounded)."""
    if tuple(x.shape[-2:]) == out:
        return x
    if x.device.type == "cpu":
        return F.interpolate(x.contiguous(memory_format=torch.channels_last), size=out, mode=mode, antialias=True)
    y = F.interpolate(x.float(), size=out, mode=mode, antialias=True)
    return y.round_().clamp_(0, 255)


def render(images: PackedImages, pre: TensorPreprocess, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The views [B, 3, crop, crop] of a batch of regions on their device: resize, centre crop, normalise, cast.
    Nothing is read back from the device and no index or constant is copied to it: no host sync."""
    groups: dict[tuple, list[int]] = {}
    regions = images.regions()
    for i, (shape, aspect) in enumerate(zip(images.shapes, images.aspect)):
        groups.setdefault((shape, resized_size(pre.size, aspect)), []).append(i)
    out = torch.empty(len(regions), 3, pre.crop, pre.crop, dtype=torch.float32, device=images.data.device)
    for (_, size), idx in groups.items():
        batch = regions[idx[0]] if len(idx) == 1 else torch.cat([regions[i] for i in idx])
        made = _centre(_resize(batch, size, pre.mode), pre.crop)
        for j, i in enumerate(idx):
            out[i].copy_(made[j])
    for c, (m, s) in enumerate(zip(pre.mean, pre.std)):  # (x / 255 - mean) / std
        out[:, c].sub_(255.0 * m).div_(255.0 * s)
    return out.to(dtype)


@dataclass
class DeferredViews:
    """One side's views of a batch, not yet made: the regions and the side's preprocessing (:func:`render`)."""

    images: PackedImages
    pre: TensorPreprocess

    def __len__(self) -> int:
        return len(self.images)

    def render(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return render(self.images, self.pre, dtype)

