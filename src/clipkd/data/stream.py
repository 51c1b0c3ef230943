"""Batches of paired views from a source, split over loader workers and processes, exactly resumable.

Every epoch has the same number of batches per split (``batches_per_split``): a split whose part of the
data runs out starts another seeded pass over it, so the DataLoader's round-robin over workers is exact.
Each batch reports how many raw records its split has consumed so far; a checkpoint stores those
counters and resuming skips that many raw records per split, without decoding them.
Unusable records (undecodable or truncated image, missing image, empty or missing caption) are skipped and
counted by reason; they never stop the run.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from clipkd.data.sources import RawSample, Source, open_image
from clipkd.data.views import PairedViews, SampleViews, collate_text
from clipkd.distill import DistillBatch


@dataclass
class BatchInfo:
    """Where a batch came from: its split, that split's raw records consumed so far, what was skipped."""

    split: int
    consumed: int
    skipped: dict[str, int] = field(default_factory=dict)


@dataclass
class DataPosition:
    """Resume point inside an epoch: batches delivered and raw records consumed per split."""

    epoch: int = 0
    batches: int = 0
    consumed: dict[int, int] = field(default_factory=dict)

    def advance(self, info: BatchInfo) -> None:
        self.batches += 1
        self.consumed[info.split] = info.consumed

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "batches": self.batches, "consumed": {str(k): v for k, v in self.consumed.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "DataPosition":
        return cls(int(d["epoch"]), int(d["batches"]), {int(k): int(v) for k, v in d["consumed"].items()})


def _usable(raw: RawSample) -> Optional[str]:
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


class DistillStream(IterableDataset):
    """An iterable of ``(DistillBatch, BatchInfo)``; one split per (process, worker)."""

    def __init__(self, source: Source, views: PairedViews, batch_size: int, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1, workers: int = 0, augment: bool = True, batches_per_split: Optional[int] = None):
        super().__init__()
        self.source, self.views, self.batch_size, self.seed = source, views, batch_size, seed
        self.rank, self.world_size, self.workers, self.augment = rank, world_size, max(workers, 1), augment
        self.batches_per_split = batches_per_split or max(1, len(source) // (batch_size * self.num_splits))
        self.position = DataPosition()

    @property
    def num_splits(self) -> int:
        return self.world_size * self.workers

    @property
    def batches_per_epoch(self) -> int:
        """Batches this process receives per epoch."""
        return self.batches_per_split * self.workers

    def start(self, position: DataPosition) -> None:
        """Set the epoch and the resume point for the next iteration."""
        self.position = DataPosition(position.epoch, position.batches, dict(position.consumed))

    def _split(self) -> tuple[int, int]:
        info = get_worker_info()
        physical = info.id if info else 0
        worker = (physical + self.position.batches) % self.workers  # continue the round-robin where it stopped
        already = (self.position.batches - worker + self.workers - 1) // self.workers if self.position.batches > worker else 0
        return self.rank * self.workers + worker, already

    def __iter__(self) -> Iterator[tuple[DistillBatch, BatchInfo]]:
        split, done = self._split()
        epoch = self.position.epoch
        skip = self.position.consumed.get(split, 0)
        raw_iter = self.source.passes(epoch, split, self.num_splits, self.seed)
        consumed = 0
        for _ in range(skip):  # resume: skip raw records without decoding them
            next(raw_iter)
            consumed += 1
        for _ in range(self.batches_per_split - done):
            views: list[SampleViews] = []
            skipped: Counter = Counter()
            while len(views) < self.batch_size:
                raw = next(raw_iter)
                consumed += 1
                out = self._views(raw, epoch, split, consumed)
                if isinstance(out, str):
                    skipped[out] += 1
                else:
                    views.append(out)
            yield self._collate(views), BatchInfo(split, consumed, dict(skipped))

    def _views(self, raw: RawSample, epoch: int, split: int, index: int):
        reason = _usable(raw)
        if reason:
            return reason
        try:
            image = open_image(raw.image)
        except Exception:  # noqa: BLE001 - any decoder failure means the same: skip and count
            return "bad_image"
        rng = random.Random(f"clipkd-aug:{self.seed}:{epoch}:{split}:{index}") if self.augment else None
        views = self.views(image, raw.caption, rng)
        views.key = raw.key
        return views

    def _collate(self, views: Sequence[SampleViews]) -> DistillBatch:
        s_img = torch.stack([v.student_image for v in views])
        same = all(v.teacher_image is v.student_image for v in views)
        return DistillBatch(
            student_images=s_img,
            student_text=collate_text([v.student_text for v in views]),
            teacher_images=s_img if same else torch.stack([v.teacher_image for v in views]),
            teacher_text=collate_text([v.teacher_text for v in views]),
            keys=[v.key for v in views],
        )


def make_loader(stream: DistillStream, workers: int, seed: int = 0) -> DataLoader:
    """A DataLoader over the stream (batches are built inside the workers)."""
    return DataLoader(stream, batch_size=None, num_workers=workers, persistent_workers=False,
                      prefetch_factor=4 if workers else None, generator=torch.Generator().manual_seed(seed))
