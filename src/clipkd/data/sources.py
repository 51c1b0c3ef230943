"""Raw image-text records from the formats CLIP users have: webdataset tar shards and CSV/TSV files.

A source is split into ``num_splits`` disjoint parts (one per data-loader worker and process) and read as an
endless sequence of passes, each pass in a seeded order that depends only on (seed, epoch, split, pass).
Nothing is decoded here: decoding (and skipping what fails to decode) is the stream's job; records that are
unusable before decoding (unreadable caption, broken shard) carry the reason in ``RawSample.error``.
A pass over a split that yields no record at all raises :class:`~clipkd.errors.DataQualityError` (it would
otherwise wait forever).
"""

from __future__ import annotations

import csv
import io
import logging
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Protocol, Sequence, Union

import webdataset as wds

if TYPE_CHECKING:
    import numpy as np

from clipkd.errors import DataQualityError

log = logging.getLogger(__name__)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
TEXT_KEYS = ("txt", "json")


@dataclass
class RawSample:
    """One undecoded record: ``image`` is bytes (shards) or a path (CSV); ``caption`` may be missing.

    ``error``: why the record is unusable, when known before decoding; ``pass_index``: the pass it belongs to;
    ``origin``: where it sits in the data, ``(part, index)``: shard ``part`` of the expanded shard list and its
    ``index``-th record in file order, or ``(0, row)`` for a CSV row (None for a broken shard's error record).
    """

    key: str
    image: Union[bytes, Path, None]
    caption: Optional[str]
    error: Optional[str] = None
    pass_index: int = 0
    origin: Optional[tuple[int, int]] = None

    def describe(self) -> str:
        """Where to find the record: the shard key, or the CSV row and its image path."""
        text = f"row {self.key}: {self.image}" if isinstance(self.image, Path) else self.key
        return text.encode("utf-8", "backslashreplace").decode("utf-8")  # printable, whatever the bytes


class Source(Protocol):
    def passes(self, epoch: int, split: int, num_splits: int, seed: int) -> Iterator[RawSample]:
        """Endless stream of this split's records, pass after pass, in a seeded order."""

    def __len__(self) -> int:
        """Number of records (all splits)."""


def _rng(*parts: int) -> random.Random:
    """A generator that depends only on ``parts`` (string seeds are hashed with SHA-512: same in every process)."""
    return random.Random("clipkd:" + ":".join(map(str, parts)))


def _prepare_csv(path: Path) -> None:
    """A clear error for a missing file; long fields allowed (long captions are the tokenizer's business)."""
    if not path.is_file():
        raise FileNotFoundError(f"CSV file not found: {path}")
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))


def _require_columns(path: Path, header: Optional[Sequence[str]], keys: Sequence[str]) -> None:
    missing = [k for k in keys if k not in (header or [])]
    if missing:
        raise ValueError(f"{path}: column(s) {missing} not found (columns: {list(header) if header else None})")


def read_csv_rows(path: Path, separator: str, keys: Sequence[str], errors: str = "strict") -> list[dict]:
    """All rows of a CSV/TSV as dicts; clear errors for a missing file, missing columns or a malformed file.

    ``errors``: how bytes that are not UTF-8 are decoded (``surrogateescape`` keeps them recognisable).
    """
    _prepare_csv(path)
    with path.open(newline="", encoding="utf-8", errors=errors) as f:
        reader = csv.DictReader(f, delimiter=separator)
        try:
            _require_columns(path, reader.fieldnames, keys)
            return list(reader)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}, line {reader.line_num}: not a readable CSV ({exc})") from None


def _readable(text: str) -> bool:
    """False for text holding bytes that were not UTF-8 (decoded with ``surrogateescape``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _csv_row(row: dict, img_key: str, caption_key: str, root: Path) -> tuple[Optional[Path], Optional[str]]:
    """(image path or None when the cell is empty/absent, caption or None when absent)."""
    name = row.get(img_key)
    return (root / name if name and name.strip() else None), row.get(caption_key)


def _csv_sample(i: int, path: Optional[Path], caption: Optional[str], pass_index: int = 0) -> RawSample:
    """Row ``i`` of a CSV as a record (key: the row index; an unreadable caption makes it ``bad_caption``)."""
    error = "bad_caption" if caption is not None and not _readable(caption) else None
    return RawSample(key=str(i), image=path, caption=caption, error=error, pass_index=pass_index, origin=(0, i))


class _Lines:
    """The lines of a binary file, decoded (``surrogateescape``), with the byte offset reached so far."""

    def __init__(self, f):
        self.f, self.pos = f, 0

    def __iter__(self) -> "_Lines":
        return self

    def __next__(self) -> str:
        line = self.f.readline()
        if not line:
            raise StopIteration
        self.pos += len(line)
        return line.decode("utf-8", "surrogateescape")


def index_csv(path: Path, separator: str, keys: Sequence[str]) -> tuple[list[str], "np.ndarray"]:
    """(header, ``[rows, 2]`` int64 byte ranges of every non-blank row) of a CSV/TSV, in one streaming pass.

    The csv module itself finds the rows (a quoted field may span lines), so each range parses back to the row
    :class:`csv.DictReader` would give; 16 bytes per row stay in memory. Errors as :func:`read_csv_rows`.
    """
    import array

    import numpy as np

    _prepare_csv(path)
    ranges = array.array("q")
    with path.open("rb") as f:
        lines = _Lines(f)
        reader = csv.reader(lines, delimiter=separator)
        try:
            header = next(reader, [])
            _require_columns(path, header, keys)
            while True:
                start = lines.pos
                row = next(reader, None)
                if row is None:
                    break
                if row:  # a blank line is no row (as for DictReader)
                    ranges.extend((start, lines.pos))
        except csv.Error as exc:
            raise ValueError(f"{path}, line {reader.line_num}: not a readable CSV ({exc})") from None
    return header, np.frombuffer(ranges, dtype=np.int64).reshape(-1, 2).copy()


class CsvSource:
    """CSV/TSV with an image-path column and a caption column; paths relative to ``root`` (or absolute).

    Bytes that are not UTF-8 do not stop the read: such a caption makes its row unusable (``bad_caption``).
    Memory does not hold the rows: an index of each row's byte range (16 bytes per row, :func:`index_csv`), and
    each record is read from the file when it is needed (each process opens its own handle).
    """

    def __init__(self, path: Union[str, Path], img_key: str = "filepath", caption_key: str = "title",
                 separator: str = ",", root: Union[str, Path, None] = None):
        self.path = Path(path)
        self.root = Path(root) if root is not None else self.path.parent
        self.img_key, self.caption_key, self.separator = img_key, caption_key, separator
        self.header, self.ranges = index_csv(self.path, separator, (img_key, caption_key))
        if not len(self.ranges):
            raise ValueError(f"{self.path}: no rows")
        self._handle: Optional[tuple[int, Any]] = None

    def __len__(self) -> int:
        return len(self.ranges)

    def __getstate__(self) -> dict[str, Any]:  # a loader worker opens its own file handle
        return {**self.__dict__, "_handle": None}

    def _file(self):
        import os

        if self._handle is None or self._handle[0] != os.getpid():
            self._handle = (os.getpid(), self.path.open("rb"))
        return self._handle[1]

    def row(self, i: int) -> dict[str, Optional[str]]:
        """Row ``i`` (0 = the first row after the header) as :class:`csv.DictReader` gives it."""
        start, stop = (int(x) for x in self.ranges[i])
        f = self._file()
        f.seek(start)
        text = f.read(stop - start).decode("utf-8", "surrogateescape")
        fields = next(csv.reader(io.StringIO(text, newline=""), delimiter=self.separator), [])
        return {k: (fields[j] if j < len(fields) else None) for j, k in enumerate(self.header)}

    def records(self, start: int = 0, stop: Optional[int] = None) -> Iterator[RawSample]:
        """Rows ``start`` to ``stop`` (exclusive; None: the end) once, in file order (no shuffling, no
        splitting); keys as in :meth:`passes`."""
        for i in range(start, len(self) if stop is None else min(stop, len(self))):
            yield self._sample(i)

    def _sample(self, i: int, pass_index: int = 0) -> RawSample:
        return _csv_sample(i, *_csv_row(self.row(i), self.img_key, self.caption_key, self.root), pass_index)

    def passes(self, epoch: int, split: int, num_splits: int, seed: int) -> Iterator[RawSample]:
        import numpy as np

        n = 0
        while True:
            # the same permutation for every split (splits stay disjoint); int32/int64 indices, not Python ints
            order = np.random.default_rng(_rng(seed, epoch, n).getrandbits(64)).permutation(len(self))
            mine = order[split::num_splits]
            if not len(mine):
                raise DataQualityError(f"{self.path}: no record for loader split {split} of {num_splits}: "
                                       f"{len(self)} rows cannot be split over {num_splits} loader workers x "
                                       "processes; use fewer data.workers or processes")
            for i in mine:
                yield self._sample(int(i), n)
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


def _caption(kind: Optional[str], value: Any) -> tuple[Optional[str], Optional[str]]:
    """(caption, None), or (None, "bad_caption") for text that is not UTF-8 or JSON that does not parse."""
    if value is None:
        return None, None
    try:
        text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
    except UnicodeDecodeError:
        return None, "bad_caption"
    if kind == "json":
        import json

        try:
            obj = json.loads(text)
        except ValueError:
            return None, "bad_caption"
        text = (obj.get("caption") or obj.get("text") or "") if isinstance(obj, dict) else str(obj)
    return text, None


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
        return self._records(range(len(self.shards)), 0, 1)

    def shard_records(self, index: int) -> Iterator[RawSample]:
        """Every record of shard ``index`` (of the expanded list) once, in file order; a broken shard ends
        with one ``shard_error`` record."""
        return self._records([index], 0, 1)

    def _records(self, parts: Sequence[int], split: int, stride: int, pass_index: int = 0) -> Iterator[RawSample]:
        """The records of shards ``parts`` (indices into the expanded list), every ``stride``-th from ``split``;
        each with its origin (shard index, index in the shard's file order)."""
        errors: list[str] = []

        def handler(exc: Exception) -> bool:
            errors.append(str(exc))
            return True  # skip the rest of a broken shard, keep going

        samples = wds.tariterators.tarfile_samples([{"url": self.shards[p]} for p in parts], handler=handler)
        where = _Origins(self.shards, parts)
        for i, sample in enumerate(samples):
            yield from self._errors(errors, split, pass_index)
            origin = where.next(sample.get("__url__"))
            if i % stride != split:
                continue
            _, image = _pick(sample, IMAGE_KEYS)
            caption, error = _caption(*_pick(sample, TEXT_KEYS))
            yield RawSample(key=f"{sample.get('__url__')}/{sample['__key__']}", image=image, caption=caption,
                            error=error, pass_index=pass_index, origin=origin)
        yield from self._errors(errors, split, pass_index)

    @staticmethod
    def _errors(errors: list[str], split: int, pass_index: int) -> Iterator[RawSample]:
        """A broken shard (e.g. truncated tar) becomes one counted record, reported by one split only.

        Its key is the error message, which names the shard.
        """
        while errors:
            message = errors.pop(0)
            log.debug("shard error: %s", message)
            if split == 0:
                yield RawSample(key=message[:300], image=None, caption=None, error="shard_error",
                                pass_index=pass_index)

    def passes(self, epoch: int, split: int, num_splits: int, seed: int) -> Iterator[RawSample]:
        n = 0
        while True:
            rng = _rng(seed, epoch, n, split)
            shards = list(range(len(self.shards)))
            _rng(seed, epoch, n).shuffle(shards)
            if len(shards) >= num_splits:
                mine, stride, offset = shards[split::num_splits], 1, 0
            else:  # fewer shards than splits: every split reads all shards, keeps every num_splits-th sample
                mine, stride, offset = shards, num_splits, split
            read = 0
            for record in _shuffled(self._records(mine, offset, stride, n), self.shuffle_buffer, rng):
                read += 1
                yield record
            if not read:
                raise DataQualityError(
                    f"a pass over loader split {split} of {num_splits} read no record from {len(mine)} shard(s) "
                    f"(first: {self.shards[mine[0]]}): empty or unreadable shards, or fewer samples than loader "
                    "workers x processes; check the training data")
            n += 1


class _Origins:
    """(shard index, record index in its file order) of consecutive samples read from shards ``parts``."""

    def __init__(self, shards: Sequence[str], parts: Sequence[int]):
        self.shards, self.parts = shards, list(parts)
        self.pos, self.url, self.count = -1, None, 0

    def next(self, url: Optional[str]) -> Optional[tuple[int, int]]:
        if url != self.url:  # the next shard that yields samples (a broken or empty one may yield none)
            self.url, self.count = url, 0
            self.pos = next((j for j in range(self.pos + 1, len(self.parts)) if self.shards[self.parts[j]] == url),
                            len(self.parts))
        if self.pos >= len(self.parts):
            return None
        self.count += 1
        return self.parts[self.pos], self.count - 1


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
