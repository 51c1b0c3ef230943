"""One training batch: a view per side (each side's own preprocessing and tokenizer), or stored teacher
embeddings instead of the teacher's views (reinforced data)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch

from clipkd.embeddings import Embeddings, TextBatch


@dataclass
class DistillBatch:
    """One batch with a view per side: each side's own preprocessing and own tokenizer.

    With a teacher ensemble ``teacher_images`` and ``teacher_text`` are tuples, one entry per teacher.
    """

    student_images: torch.Tensor
    student_text: TextBatch
    teacher_images: torch.Tensor
    teacher_text: TextBatch
    keys: Optional[list[str]] = None
    teacher: Optional[Embeddings] = None  # the teacher's stored embeddings (reinforced data): no teacher forward

    def __len__(self) -> int:
        return int(self.student_images.shape[0])

    def to(self, device: Union[str, torch.device], non_blocking: bool = False) -> "DistillBatch":
        """The batch on ``device``; images shared by both sides stay shared."""
        move = lambda x: x.to(device, non_blocking=non_blocking)  # noqa: E731
        s_img = move(self.student_images)
        t_img = s_img if self.teacher_images is self.student_images else _map_text(self.teacher_images, move)
        cached = None if self.teacher is None else Embeddings(move(self.teacher.img), move(self.teacher.txt),
                                                              move(self.teacher.scale))
        return DistillBatch(s_img, _map_text(self.student_text, move), t_img, _map_text(self.teacher_text, move),
                            self.keys, cached)


def _map_text(text, fn):
    """``fn`` on every tensor of a token batch (a tensor or a mapping), or of an ensemble's tuple of them."""
    if isinstance(text, tuple):
        return tuple(_map_text(t, fn) for t in text)
    return fn(text) if isinstance(text, torch.Tensor) else {k: fn(v) for k, v in text.items()}
