"""One training batch: a view per side (each side's own preprocessing and tokenizer), or stored teacher
embeddings instead of the teacher's views (reinforced data)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch

from clipkd.data.tensor_views import DeferredViews
from clipkd.embeddings import Embeddings, TextBatch

Images = Union[torch.Tensor, DeferredViews]


@dataclass
class DistillBatch:
    """One batch with a view per side: each side's own preprocessing and own tokenizer.

    With a teacher ensemble ``teacher_images`` and ``teacher_text`` are tuples, one entry per teacher. Images may
    be :class:`~clipkd.data.tensor_views.DeferredViews` (``data.preprocess: device``): :meth:`rendered` makes them
    on the batch's device.
    """

    student_images: Images
    student_text: TextBatch
    teacher_images: Union[Images, tuple[Images, ...]]
    teacher_text: TextBatch
    keys: Optional[list[str]] = None
    teacher: Optional[Embeddings] = None  # the teacher's stored embeddings (reinforced data): no teacher forward

    def __len__(self) -> int:
        return len(self.student_images)

    def to(self, device: Union[str, torch.device], non_blocking: bool = False) -> "DistillBatch":
        """The batch on ``device``; images shared by both sides (or regions shared by their views) stay shared."""
        return self._each_tensor(lambda x: x.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "DistillBatch":
        """The batch in page-locked host memory (the loader's ``pin_memory``: copies to a GPU that overlap)."""
        return self._each_tensor(lambda x: x.pin_memory())

    def _each_tensor(self, move) -> "DistillBatch":
        """``move`` applied to every tensor (and packed regions) once; what was shared stays shared."""
        regions: dict[int, object] = {}

        def move_images(x):
            if not isinstance(x, DeferredViews):
                return move(x)
            if id(x.images) not in regions:
                regions[id(x.images)] = move(x.images)
            return DeferredViews(regions[id(x.images)], x.pre)

        s_img = move_images(self.student_images)
        t_img = s_img if self.teacher_images is self.student_images else _map_images(self.teacher_images, move_images)
        t = self.teacher
        cached = None if t is None else Embeddings(move(t.img), move(t.txt), move(t.scale),
                                                   None if t.bias is None else move(t.bias))
        return DistillBatch(s_img, _map_text(self.student_text, move), t_img, _map_text(self.teacher_text, move),
                            self.keys, cached)

    def rendered(self, dtype: torch.dtype = torch.float32) -> "DistillBatch":
        """The batch with every side's deferred views made (on their device); itself when there are none."""
        if not isinstance(self.student_images, DeferredViews):
            return self
        made: dict[object, torch.Tensor] = {}

        def render(x):
            key = (id(x.images), x.pre)
            if key not in made:
                made[key] = x.render(dtype)
            return made[key]

        s_img = render(self.student_images)
        t_img = s_img if self.teacher_images is self.student_images else _map_images(self.teacher_images, render)
        return DistillBatch(s_img, self.student_text, t_img, self.teacher_text, self.keys, self.teacher)


def _map_images(images, fn):
    """``fn`` on one side's images, or on each entry of an ensemble's tuple."""
    return tuple(fn(x) for x in images) if isinstance(images, tuple) else fn(images)


def _map_text(text, fn):
    """``fn`` on every tensor of a token batch (a tensor or a mapping), or of an ensemble's tuple of them."""
    if isinstance(text, tuple):
        return tuple(_map_text(t, fn) for t in text)
    return fn(text) if isinstance(text, torch.Tensor) else {k: fn(v) for k, v in text.items()}
