"""Held-out pairs for evaluation: every usable pair exactly once, in a fixed order, in batches.

The training :class:`~clipkd.data.stream.DistillStream` is built for training: endless seeded passes, full
batches only (a small set is repeated to fill a batch, a partial last batch is dropped). Held-out evaluation
needs the opposite, which :class:`HeldOutPairs` gives: the source is read once per pass in its own order (CSV
row order, shard order: ``records()``), without augmentation, and the last batch holds the remainder.
Unusable records are skipped and counted by reason with the training stream's rules.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterator, Optional, Protocol

from clipkd.data.batch import DistillBatch
from clipkd.data.decode import collate_views, decode_record
from clipkd.data.sources import RawSample
from clipkd.data.views import PairedViews, SampleViews

__all__ = ["HeldOutPairs", "RecordSource"]


class RecordSource(Protocol):
    def records(self) -> Iterator[RawSample]:
        """Every record once, in a fixed order (no shuffling, no splitting)."""


class HeldOutPairs:
    """An iterable of :class:`DistillBatch`: each usable held-out pair once, in the source's order.

    ``batch_size`` pairs per batch, the last batch partial; ``max_batches`` (None = all) stops early;
    images of more than ``max_image_pixels`` pixels are skipped (``too_large``), as in training.
    After a pass, ``pairs`` is the number of pairs delivered and ``skipped`` the unusable records by reason.
    """

    def __init__(self, source: RecordSource, views: PairedViews, batch_size: int,
                 max_batches: Optional[int] = None, max_image_pixels: Optional[int] = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_batches is not None and max_batches < 1:
            raise ValueError(f"max_batches must be >= 1 or None, got {max_batches}")
        self.source, self.views, self.batch_size, self.max_batches = source, views, batch_size, max_batches
        self.max_image_pixels = max_image_pixels
        self.pairs = 0
        self.skipped: Counter = Counter()

    def _full(self, batches: int) -> bool:
        return self.max_batches is not None and batches >= self.max_batches

    def __iter__(self) -> Iterator[DistillBatch]:
        self.pairs, self.skipped = 0, Counter()
        pending: list[SampleViews] = []
        batches = 0
        for raw in self.source.records():
            out = decode_record(raw, self.views, None, self.max_image_pixels)
            if isinstance(out, str):
                self.skipped[out] += 1
                continue
            pending.append(out)
            if len(pending) == self.batch_size:
                yield self._emit(pending)
                pending, batches = [], batches + 1
                if self._full(batches):
                    return
        if pending:
            yield self._emit(pending)

    def _emit(self, pending: list[SampleViews]) -> DistillBatch:
        self.pairs += len(pending)
        return collate_views(pending)
