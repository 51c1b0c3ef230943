"""Where a data process spends its CPU: seconds per stage of the data path, accumulated per process.

The stream wraps each stage of a record's way to a batch (``read``: the raw record from its source; ``sidecar``:
the stored view's fingerprint check and rows; ``decode``: image bytes to pixels; ``preprocess``: crop, resize,
normalise; ``tokenize``; ``collate``) in :func:`stage`; every batch carries the stages' CPU seconds spent on it
since the previous batch of the same process (:attr:`clipkd.data.stream.BatchInfo.stages`), and ``cpu_s``, all the
CPU the process spent on it. ``time.process_time`` costs well under a microsecond: the clock is always on.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

STAGES = ("read", "sidecar", "decode", "preprocess", "tokenize", "collate")

_totals: dict[str, float] = defaultdict(float)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Count the CPU seconds of this process (all its threads) inside the block to stage ``name``."""
    start = time.process_time()
    try:
        yield
    finally:
        _totals[name] += time.process_time() - start


def take() -> dict[str, float]:
    """The CPU seconds per stage since the last call (in this process), and reset."""
    out = dict(_totals)
    _totals.clear()
    return out
