"""The sidecars of a training data section: which records each one mirrors, and reading them in file order.

webdataset: one sidecar per tar shard, in the order of the expanded shard list. CSV/TSV: one sidecar per
``rows_per_shard`` rows, read by range from the file's row index (16 bytes per row in memory).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from clipkd.config import DataConfig
from clipkd.data.sources import CsvSource, RawSample, ShardSource
from clipkd.files import quick_digest, sha256_file
from clipkd.reinforce.format import sidecar_name

Chunk = tuple["SidecarSpec", Iterator[RawSample]]


@dataclass(frozen=True)
class SidecarSpec:
    """Sidecar ``index``: the shard URL it mirrors, or CSV rows ``start`` to ``stop`` (exclusive)."""

    index: int
    source: str
    start: Optional[int] = None
    stop: Optional[int] = None

    @property
    def file(self) -> str:
        return sidecar_name(self.index)

    def describe(self) -> dict[str, Any]:
        """The data it mirrors, for its metadata and the manifest; a local shard's size and quick digest."""
        if self.start is not None:
            return {"source": self.source, "start": self.start, "stop": self.stop}
        local = Path(self.source)
        if not local.is_file():
            return {"source": self.source}
        return {"source": self.source, "data_bytes": local.stat().st_size, "data_digest": quick_digest(local)}


def shard_location(url: str) -> str:
    """A shard URL as the cache records it: a local path made absolute (the same shard named from any folder);
    ``pipe:`` commands and ``scheme://`` URLs as they are."""
    return url if "://" in url or url.startswith("pipe:") else os.path.abspath(url)


def local_shard(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:") and Path(url).is_file()


class ShardPlan:
    """One sidecar per webdataset shard."""

    def __init__(self, dc: DataConfig):
        self.source = ShardSource(dc.train)
        self.sidecars = [SidecarSpec(i, shard_location(url)) for i, url in enumerate(self.source.shards)]
        self.identity: dict[str, Any] = {"format": "webdataset",
                                         "shards": [shard_location(u) for u in self.source.shards]}

    def chunks(self, wanted: Sequence[int]) -> Iterator[Chunk]:
        """(sidecar, its records in file order) for each wanted sidecar, in index order."""
        for i in sorted(wanted):
            yield self.sidecars[i], self.source.shard_records(i)

    def size_hint(self, wanted: Sequence[int]) -> Optional[int]:
        """Records in the wanted sidecars when every shard is a local file (tar headers only), else None."""
        from clipkd.data.sources import count_shard_samples

        urls = [self.sidecars[i].source for i in wanted]
        return count_shard_samples(urls) if all(local_shard(u) for u in urls) else None


class CsvPlan:
    """One sidecar per ``rows_per_shard`` rows of a CSV/TSV (rows read by range from the file's row index)."""

    def __init__(self, dc: DataConfig, rows_per_shard: int):
        if not isinstance(dc.train, str):
            raise ValueError("data.train: a CSV source takes one file path")
        self.path = Path(dc.train)
        self.source = CsvSource(self.path, dc.csv_img_key, dc.csv_caption_key, dc.csv_separator, dc.root)
        rows = len(self.source)
        bounds = range(0, rows, rows_per_shard)
        self.sidecars = [SidecarSpec(i, f"rows {a}-{min(a + rows_per_shard, rows) - 1}", a,
                                     min(a + rows_per_shard, rows)) for i, a in enumerate(bounds)]
        self.rows_per_shard, self.dc = rows_per_shard, dc

    @functools.cached_property
    def identity(self) -> dict[str, Any]:
        """The data by content (the CSV's SHA-256: read once, by the process that asks; a job asks on rank 0)."""
        dc = self.dc
        return {"format": "csv", "path": str(self.path), "sha256": sha256_file(self.path), "rows": len(self.source),
                "rows_per_shard": self.rows_per_shard, "img_key": dc.csv_img_key, "caption_key": dc.csv_caption_key,
                "separator": dc.csv_separator, "root": dc.root}

    def chunks(self, wanted: Sequence[int]) -> Iterator[Chunk]:
        """(sidecar, its rows in file order) for each wanted sidecar, in index order."""
        for i in sorted(wanted):
            spec = self.sidecars[i]
            yield spec, self.source.records(spec.start, spec.stop)

    def size_hint(self, wanted: Sequence[int]) -> Optional[int]:
        return sum(self.sidecars[i].stop - self.sidecars[i].start for i in wanted)


def make_plan(dc: DataConfig, rows_per_shard: int):
    """The :class:`ShardPlan` or :class:`CsvPlan` of a data section."""
    return CsvPlan(dc, rows_per_shard) if dc.format == "csv" else ShardPlan(dc)
