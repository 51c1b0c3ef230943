"""Raw image-text records from the formats CLIP users have: webdataset tar shards and CSV/TSV files.

A source is split into ``num_splits`` disjoint parts (one per data-loader worker and process) and read as an
endless sequence of passes, each pass in a seeded order that depends only on (seed, epoch, split, pass).
Nothing is decoded here: decoding (and skipping what fails to decode) is the stream's job.
"""

from __future__ import annotations

import csv
import io
import logging
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Protocol, Sequence, Union

import webdataset as wds

log = logging.getLogger(__name__)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
TEXT_KEYS = ("txt", "json")


@dataclass
class RawSample:
    """One undecoded record: ``image`` is bytes (shards) or a path (CSV); ``caption`` may be missing."""

    key: str
    image: Union[bytes, Path, None]
    caption: Optional[str]
    error: Optional[str] = None


class Source(Protocol):
    def passes(self, epoch: int, split: int, num_splits: int, seed: int) -> Iterator[RawSample]:
        """Endless stream of this split's records, pass after pass, in a seeded order."""

    def __len__(self) -> int:
        """Number of records (all splits)."""


def _rng(*parts: int) -> random.Random:
    """A generator that depends only on ``parts`` (string seeds are hashed with SHA-512: same in every process)."""
    return random.Random("clipkd:" + ":".join(map(str, parts)))


def read_csv_rows(path: Path, separator: str, keys: Sequence[str]) -> list[dict]:
    """All rows of a CSV/TSV as dicts; clear errors for a missing file or missing columns."""
    if not path.is_file():
        raise FileNotFoundError(f"CSV file not found: {path}")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=separator)
        missing = [k for k in keys if k not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: column(s) {missing} not found (columns: {reader.fieldnames})")
        return list(reader)


class CsvSource:
    """CSV/TSV with an image-path column and a caption column; paths relative to ``root`` (or absolute)."""

    def __init__(self, path: Union[str, Path], img_key: str = "filepath", caption_key: str = "title",
                 separator: str = ",", root: Union[str, Path, None] = None):
        self.path = Path(path)
        root = Path(root) if root is not None else self.path.parent
        rows = read_csv_rows(self.path, separator, (img_key, caption_key))
        self.rows = [(root / r[img_key], r[caption_key]) for r in rows]
        if not self.rows:
            raise ValueError(f"{self.path}: no rows")

    def __len__(self) -> int:
        return len(self.rows)

    def passes(self, epoch: int, split: int, num_splits: int, seed: int) -> Iterator[RawSample]:
        n = 0
        while True:
            order = list(range(len(self.rows)))
            _rng(seed, epoch, n).shuffle(order)  # same permutation for every split: splits stay disjoint
            for i in order[split::num_splits]:
                path, caption = self.rows[i]
                yield RawSample(key=str(i), image=path, caption=caption)
            n += 1


def expand_shards(urls: Union[str, Sequence[str]]) -> list[str]:
    """Brace-expand webdataset URLs (``data/{000..009}.tar``, ``::``-separated lists, or a list)."""
    items = [urls] if isinstance(urls, str) else list(urls)
    out: list[str] = []
    for item in items:
        out.extend(wds.shardlists.expand_urls(item))
    if not out:
        raise ValueError(f"no shards in {urls!r}")
    return out


def count_shard_samples(shards: Sequence[str]) -> int:
    """Number of samples in local tar shards (reads tar headers only)."""
    total = 0
    for shard in shards:
        if not Path(shard).is_file():
            raise ValueError(f"cannot count samples of '{shard}': not a local file; set data.num_samples")
        keys = set()
        try:
            with tarfile.open(shard) as tar:
                for member in tar:
                    if member.isreg() and any(member.name.lower().endswith("." + k) for k in IMAGE_KEYS):
                        keys.add(member.name.rsplit(".", 1)[0])
        except (tarfile.TarError, OSError) as exc:
            log.warning("counting %s stopped early: %s", shard, exc)
        total += len(keys)
    return total


def _pick(sample: dict[str, Any], keys: Sequence[str]) -> tuple[Optional[str], Any]:
    for k in keys:
        if k in sample:
            return k, sample[k]
    return None, None


def _caption(kind: Optional[str], value: Any) -> Optional[str]:
    if value is None:
        return None
    text = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
    if kind == "json":
        import json

        try:
            obj = json.loads(text)
        except ValueError:
            return None
        text = (obj.get("caption") or obj.get("text") or "") if isinstance(obj, dict) else str(obj)
    return text


class ShardSource:
    """webdataset tar shards. Shards are split across splits when there are enough, else samples are."""

    def __init__(self, urls: Union[str, Sequence[str]], shuffle_buffer: int = 1000, num_samples: Optional[int] = None):
        self.shards = expand_shards(urls)
        self.shuffle_buffer = shuffle_buffer
        self._len = num_samples

    def __len__(self) -> int:
        if self._len is None:
            self._len = count_shard_samples(self.shards)
        return self._len

    def records(self) -> Iterator[RawSample]:
        """Every record of every shard once, in shard order (no shuffling, no splitting)."""
        return self._records(self.shards, 0, 1)

    def _records(self, shards: Sequence[str], split: int, stride: int) -> Iterator[RawSample]:
        errors: list[str] = []

        def handler(exc: Exception) -> bool:
            errors.append(str(exc))
            return True  # skip the rest of a broken shard, keep going

        samples = wds.tariterators.tarfile_samples([{"url": u} for u in shards], handler=handler)
        for i, sample in enumerate(samples):
            yield from self._errors(errors, split)
            if i % stride != split:
                continue
            _, image = _pick(sample, IMAGE_KEYS)
            kind, text = _pick(sample, TEXT_KEYS)
            yield RawSample(key=f"{sample.get('__url__')}/{sample['__key__']}", image=image, caption=_caption(kind, text))
        yield from self._errors(errors, split)

    @staticmethod
    def _errors(errors: list[str], split: int) -> Iterator[RawSample]:
        """A broken shard (e.g. truncated tar) becomes one counted record, reported by one split only."""
        while errors:
            message = errors.pop(0)
            log.debug("shard error: %s", message)
            if split == 0:
                yield RawSample(key="", image=None, caption=None, error="shard_error")

    def passes(self, epoch: int, split: int, num_splits: int, seed: int) -> Iterator[RawSample]:
        n = 0
        while True:
            rng = _rng(seed, epoch, n, split)
            shards = list(self.shards)
            _rng(seed, epoch, n).shuffle(shards)
            if len(shards) >= num_splits:
                mine, stride, offset = shards[split::num_splits], 1, 0
            else:  # fewer shards than splits: every split reads all shards, keeps every num_splits-th sample
                mine, stride, offset = shards, num_splits, split
            yield from _shuffled(self._records(mine, offset, stride), self.shuffle_buffer, rng)
            n += 1


def _shuffled(items: Iterator[RawSample], size: int, rng: random.Random) -> Iterator[RawSample]:
    """A seeded shuffle buffer (the webdataset way: bounded memory, local randomness)."""
    buf: list[RawSample] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = rng.randrange(len(buf))
        buf[j], item = item, buf[j]
        yield item
    rng.shuffle(buf)
    yield from buf


def read_image_bytes(image: Union[bytes, Path]) -> bytes:
    """Bytes of an image, from a shard member or a file."""
    return image if isinstance(image, bytes) else Path(image).read_bytes()


def open_image(image: Union[bytes, Path]):
    """Decode fully into an RGB PIL image; raises on unreadable or truncated data."""
    from PIL import Image

    with Image.open(io.BytesIO(read_image_bytes(image))) as im:
        im.load()
        return im.convert("RGB")
