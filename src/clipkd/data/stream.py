"""Batches of paired views from a source, split over loader workers and processes, exactly resumable.

Every epoch has the same number of batches per split (``batches_per_split``): a split whose part of the
data runs out starts another seeded pass over it, so the DataLoader's round-robin over workers is exact.
Each batch reports how many raw records its split has consumed so far; a checkpoint stores those
counters and resuming skips that many raw records per split, without decoding them.
Unusable records (see :data:`SKIP_REASONS`) are skipped and counted by reason, and the first few of each
reason are logged and reported. The unusable share is judged on the records each split READS, whether or not
a batch fills: above ``max_skip_fraction`` (from 100 records on, or at the end of a pass) or a full pass
without any usable record raises :class:`~clipkd.errors.DataQualityError` instead of reading forever.
Loader workers exit when their parent process is gone (Linux: PR_SET_PDEATHSIG; everywhere: a parent-pid
check every few records), so a killed run leaves no worker spinning.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator, Optional, Protocol, Union

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from clipkd.data.batch import DistillBatch
from clipkd.data.decode import collate_views, decode_record
from clipkd.data.sources import RawSample, Source
from clipkd.data.stages import stage, take
from clipkd.data.views import PairedViews, SampleViews
from clipkd.errors import USER_ERRORS, DataQualityError, worker_message

log = logging.getLogger(__name__)

SKIP_REASONS = {
    "bad_image": "not a decodable image",
    "truncated_image": "image data cut short",
    "empty_file": "zero-byte image",
    "missing_file": "CSV row naming a file that does not exist",
    "unreadable_file": "image file that cannot be read (permissions, a folder...)",
    "too_large": "more pixels than data.max_image_pixels (decompression bomb)",
    "missing_image": "shard sample without an image member, or CSV row without a path",
    "missing_caption": "no caption",
    "empty_caption": "empty or whitespace-only caption",
    "bad_caption": "caption that is not UTF-8 text (or JSON that does not parse)",
    "shard_error": "broken or truncated tar shard (the rest of that shard is lost)",
}
MIN_RECORDS = 100  # the unusable share is judged from this many records read on (and at each pass end)
MAX_EXAMPLES = 5  # unusable records remembered (and logged) per reason and split
PARENT_CHECK_EVERY = 64  # records between two checks that the parent process is still there
_PARENT_PID: Optional[int] = None  # in a loader worker: the pid of the process that started it


class StoredViews(Protocol):
    """Where the views come from with reinforced data (:class:`clipkd.reinforce.replay.ReinforcedViews`)."""

    def decode(self, raw: RawSample, views: PairedViews, epoch: int,
               max_pixels: Optional[int] = None) -> Union[SampleViews, str]: ...


@dataclass
class BatchInfo:
    """Where a batch came from: its split, that split's raw records consumed so far, what was skipped."""

    split: int
    consumed: int
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)  # first unusable records per reason, once each
    cpu_s: float = 0.0  # CPU seconds the producing process spent making this batch (all of it)
    stages: dict[str, float] = field(default_factory=dict)  # ...per stage of the data path (clipkd.data.stages)
    epoch: int = 0


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


def worker_init(parent_pid: int, worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: the worker dies with its parent (SIGKILL on Linux; else the loop's check)."""
    global _PARENT_PID
    _PARENT_PID = parent_pid
    for sig in (signal.SIGTERM, signal.SIGINT):  # pre-emption signals the whole group: the parent decides
        signal.signal(sig, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            # PR_SET_PDEATHSIG: SIGKILL when the parent *thread* that started the worker ends - the thread
            # iterating the loader, which outlives its workers (they are shut down when iteration ends)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if _orphaned():  # the parent died before the line above
        os._exit(1)


def _orphaned() -> bool:
    """In a loader worker whose parent process is gone (the worker was re-parented)."""
    return _PARENT_PID is not None and os.getppid() != _PARENT_PID


class SkipLedger:
    """What one split read in one iteration: records, unusable ones by reason and example, per pass.

    Raises :class:`DataQualityError` when the unusable share exceeds ``limit`` (judged from ``MIN_RECORDS``
    records on, and at each pass end) or when a full pass had no usable record.
    """

    def __init__(self, split: int, limit: float, log_examples: bool = True, first_pass_complete: bool = True):
        self.split, self.limit, self.log_examples = split, limit, log_examples
        self.read, self.bad, self.skipped = 0, 0, Counter()
        self.examples: dict[str, list[str]] = {}
        self.new_examples: dict[str, list[str]] = {}
        self.pass_index: Optional[int] = None
        self.pass_complete, self.pass_read, self.pass_usable = first_pass_complete, 0, 0

    def enter(self, pass_index: int) -> None:
        """Note the pass of the next record; a new one ends (and judges) the previous one."""
        if self.pass_index is not None and pass_index != self.pass_index:
            self.end_pass()
            self.pass_complete = True
        self.pass_index = pass_index

    def count(self, reason: Optional[str], raw: RawSample) -> None:
        """One record read: usable (``reason`` None) or skipped for ``reason``."""
        self.read += 1
        self.pass_read += 1
        if reason is None:
            self.pass_usable += 1
        else:
            self.bad += 1
            self.skipped[reason] += 1
            self._example(reason, raw)
        self.judge()

    def _example(self, reason: str, raw: RawSample) -> None:
        seen = self.examples.setdefault(reason, [])
        if len(seen) < MAX_EXAMPLES:
            where = raw.describe()
            seen.append(where)
            self.new_examples.setdefault(reason, []).append(where)
            if self.log_examples:
                log.warning("unusable training record (%s): %s", reason, where)

    def take_examples(self) -> dict[str, list[str]]:
        """The examples first seen since the last call."""
        out, self.new_examples = self.new_examples, {}
        return out

    def judge(self, final: bool = False) -> None:
        if (final or self.read >= MIN_RECORDS) and self.bad > self.limit * self.read:
            raise DataQualityError(
                f"{self.bad} of {self.read} records ({self.bad / self.read:.1%}) read by loader split {self.split} "
                f"were unusable ({self._reasons()}), above data.max_skip_fraction={self.limit}; "
                f"check the training data. {self._firsts()}")

    def end_pass(self) -> None:
        """Judge the share at a pass end; a full pass without any usable record can never fill a batch."""
        self.judge(final=True)
        if self.pass_complete and self.pass_read and not self.pass_usable:
            raise DataQualityError(
                f"a full pass over loader split {self.split} ({self.pass_read} records) found no usable record "
                f"({self._reasons()}); check the training data. {self._firsts()}")
        self.pass_read = self.pass_usable = 0

    def _reasons(self) -> str:
        return ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items()))

    def _firsts(self) -> str:
        return "First unusable records: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(self.examples.items()))


class DistillStream(IterableDataset):
    """An iterable of ``(DistillBatch, BatchInfo)``; one split per (process, worker)."""

    def __init__(self, source: Source, views: PairedViews, batch_size: int, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1, workers: int = 0, augment: bool = True, batches_per_split: Optional[int] = None,
                 max_skip_fraction: float = 1.0, max_image_pixels: Optional[int] = None,
                 stored: Optional[StoredViews] = None):
        super().__init__()
        self.stored = stored
        self.source, self.views, self.batch_size, self.seed = source, views, batch_size, seed
        self.rank, self.world_size, self.workers, self.augment = rank, world_size, max(workers, 1), augment
        self.max_skip_fraction, self.max_image_pixels = max_skip_fraction, max_image_pixels
        if batches_per_split is None and len(source) == 0:
            raise DataQualityError("no record in the training data (empty shards?); check the training data")
        self.batches_per_split = batches_per_split or max(1, len(source) // (batch_size * self.num_splits))
        self.position = DataPosition()
        self.endless = False
        self._log_epoch: Optional[int] = None  # examples of unusable records are logged in this epoch only

    @property
    def num_splits(self) -> int:
        return self.world_size * self.workers

    @property
    def batches_per_epoch(self) -> int:
        """Batches this process receives per epoch."""
        return self.batches_per_split * self.workers

    def start(self, position: DataPosition, endless: bool = False) -> None:
        """Set the epoch and the resume point for the next iteration; ``endless``: it goes on to the next epochs
        (one loader, its workers kept: no start-up pause at each epoch), each batch saying its epoch."""
        self.position = DataPosition(position.epoch, position.batches, dict(position.consumed))
        self.endless = endless
        if self._log_epoch is None:
            self._log_epoch = position.epoch

    def _split(self) -> tuple[int, int]:
        info = get_worker_info()
        physical = info.id if info else 0
        worker = (physical + self.position.batches) % self.workers  # continue the round-robin where it stopped
        already = (self.position.batches - worker + self.workers - 1) // self.workers if self.position.batches > worker else 0
        return self.rank * self.workers + worker, already

    def __iter__(self) -> Iterator[tuple[DistillBatch, BatchInfo]]:
        split, done = self._split()  # a worker keeps its split from epoch to epoch: the round-robin stays exact
        epoch, skip = self.position.epoch, self.position.consumed.get(split, 0)
        while True:
            yield from self._epoch(split, epoch, done, skip)
            if not self.endless:
                return
            epoch, done, skip = epoch + 1, 0, 0

    def _epoch(self, split: int, epoch: int, done: int, skip: int) -> Iterator[tuple[DistillBatch, BatchInfo]]:
        """This split's batches of ``epoch``, the first ``done`` already delivered, ``skip`` raw records consumed."""
        if done >= self.batches_per_split:  # a checkpoint at the epoch's end: nothing left to read in it
            return
        raw_iter = self.source.passes(epoch, split, self.num_splits, self.seed)
        ledger = SkipLedger(split, self.max_skip_fraction, self._log_epoch in (None, epoch), skip == 0)
        consumed = 0
        for _ in range(skip):  # resume: skip raw records without decoding them
            _next(raw_iter, consumed)
            consumed += 1
        take()
        clock = time.process_time()
        for _ in range(self.batches_per_split - done):
            views: list[SampleViews] = []
            skipped: Counter = Counter()
            while len(views) < self.batch_size:
                with stage("read"):
                    raw = _next(raw_iter, consumed)
                consumed += 1
                ledger.enter(raw.pass_index)
                out = self._views(raw, epoch, split, consumed)
                ledger.count(out if isinstance(out, str) else None, raw)
                if isinstance(out, str):
                    skipped[out] += 1
                else:
                    views.append(out)
            with stage("collate"):
                batch = collate_views(views)
            cpu = time.process_time() - clock
            info = BatchInfo(split, consumed, dict(skipped), ledger.take_examples(), cpu, take(), epoch)
            yield batch, info
            clock = time.process_time()  # what the consumer does between two batches is not the data path's

    def _views(self, raw: RawSample, epoch: int, split: int, index: int) -> Union[SampleViews, str]:
        if self.stored is not None:  # reinforced data: the stored view of this epoch, with its teacher embeddings
            return self.stored.decode(raw, self.views, epoch, self.max_image_pixels)
        rng = random.Random(f"clipkd-aug:{self.seed}:{epoch}:{split}:{index}") if self.augment else None
        return decode_record(raw, self.views, rng, self.max_image_pixels)


def _next(raw_iter: Iterator[RawSample], consumed: int) -> RawSample:
    """The next raw record; a loader worker whose parent is gone exits here, whatever it was doing."""
    if consumed % PARENT_CHECK_EVERY == 0 and _orphaned():
        os._exit(1)
    return next(raw_iter)


class DistillLoader(DataLoader):
    """The stream's DataLoader: workers die with their parent, worker errors reach the user as one clear
    message (without the worker's traceback pasted in), and an epoch without any batch is an error."""

    def __init__(self, stream: DistillStream, workers: int, seed: int = 0, pin_memory: bool = False):
        init = functools.partial(worker_init, os.getpid()) if workers else None
        super().__init__(stream, batch_size=None, num_workers=workers, persistent_workers=False,
                         prefetch_factor=4 if workers else None, generator=torch.Generator().manual_seed(seed),
                         worker_init_fn=init, pin_memory=pin_memory)

    def __iter__(self):
        stream: DistillStream = self.dataset  # type: ignore[assignment]
        expected = 0 if stream.endless else stream.batches_per_epoch - stream.position.batches
        delivered = 0
        batches = super().__iter__()
        try:
            for item in batches:
                delivered += 1
                yield item
        except USER_ERRORS as exc:
            if worker_message(exc) is None:
                raise
            raise _without_worker_traceback(exc) from None
        finally:  # now, not when a reference cycle through the error's traceback is collected (or at exit)
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
        if expected > 0 and not delivered:
            raise DataQualityError(f"an epoch of the training data yielded no batch (expected {expected}); "
                                   "check the training data")


def _without_worker_traceback(exc: BaseException) -> BaseException:
    """``exc`` re-made with the worker's own message (torch pastes the worker's traceback into it)."""
    try:
        return type(exc)(worker_message(exc))
    except Exception:  # noqa: BLE001 - a type that takes other arguments: keep torch's message
        return exc


def make_loader(stream: DistillStream, workers: int, seed: int = 0, pin_memory: bool = False) -> DistillLoader:
    """A DataLoader over the stream (batches are built inside the workers); ``pin_memory`` for a CUDA device."""
    return DistillLoader(stream, workers, seed, pin_memory)
