"""Evaluation datasets: labelled images for zero-shot classification, multi-caption images for retrieval.

Zero-shot: an image folder (one subfolder per class, ImageNet's validation layout), a CSV of path and label,
or webdataset shards with a class-index key. Retrieval: a COCO/Flickr30k Karpathy-split JSON, a CSV with one
row per (image, caption) (several rows per image), or webdataset shards whose caption entry holds several
captions (``txt``: one per line; ``json``: a list or ``{"captions": [...]}``).

Unusable images (a file that is missing, empty, truncated or not an image; a shard sample without an image; a
retrieval image without a caption) are skipped and counted, with the training data's reasons (see
:data:`clipkd.data.stream.SKIP_REASONS`): reading the index (:func:`zeroshot_dataset`, :func:`retrieval_dataset`)
records those it can see without decoding in ``.skipped``; decoding failures are returned by
``dataset(..., skip_unusable=True)`` as :class:`Unusable` items and gathered by :func:`collate_usable`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, Optional, Sequence, Union

import torch
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

from clipkd.data.decode import UnusableImage, open_image
from clipkd.data.sources import IMAGE_KEYS, expand_shards, read_csv_rows
from clipkd.errors import DataQualityError

PathLike = Union[str, Path]
MAX_EXAMPLES = 5  # unusable images named in the result JSON and the warning


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\n", "\\n")


@dataclass
class Skipped:
    """The unusable images of an eval set: counts by reason and the first few ``(name, reason)``."""

    counts: Counter = field(default_factory=Counter)
    examples: list[tuple[str, str]] = field(default_factory=list)

    def add(self, name: str, reason: str) -> None:
        self.counts[reason] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append((_printable(name), reason))

    def extend(self, other: Skipped) -> None:
        self.counts.update(other.counts)
        self.examples.extend(other.examples[:MAX_EXAMPLES - len(self.examples)])

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        return {"count": self.count, "reasons": dict(sorted(self.counts.items())),
                "examples": [{"image": name, "reason": reason} for name, reason in self.examples]}

    def describe(self) -> str:
        """``reason: count, ...; e.g. name (reason), ...`` on one line."""
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(self.counts.items()))
        named = ", ".join(f"{name} ({reason})" for name, reason in self.examples)
        more = f" and {self.count - len(self.examples)} more" if self.count > len(self.examples) else ""
        return f"{reasons}; e.g. {named}{more}" if named else reasons


class Unusable(NamedTuple):
    """An item of a ``skip_unusable`` dataset whose image could not be decoded."""

    index: int
    reason: str


@dataclass
class UsableBatch:
    """A batch from a ``skip_unusable`` dataset: the usable images, their targets and dataset positions, and
    the positions of the unusable ones with the reason."""

    images: Optional[torch.Tensor]  # None when no image of the batch is usable
    targets: torch.Tensor
    indices: torch.Tensor
    unusable: list[tuple[int, str]]


def collate_usable(items: Sequence) -> UsableBatch:
    """``collate_fn`` for ``skip_unusable`` datasets: stacks ``(index, image, target)`` items, lists the rest."""
    good = [item for item in items if not isinstance(item, Unusable)]
    bad = [(item.index, item.reason) for item in items if isinstance(item, Unusable)]
    return UsableBatch(images=torch.stack([g[1] for g in good]) if good else None,
                       targets=torch.as_tensor([int(g[2]) for g in good], dtype=torch.long),
                       indices=torch.as_tensor([g[0] for g in good], dtype=torch.long), unusable=bad)


class FileImages(Dataset):
    """Images from a list of files (or in-memory bytes) with integer targets, through ``transform``.

    By default an item is ``(image, target)`` and an unusable image raises :class:`UnusableImage` (naming the
    file). With ``skip_unusable`` an item is ``(index, image, target)``, or :class:`Unusable` with the reason
    the training data uses (``bad_image``, ``truncated_image``, ``missing_file``...); batch it with
    :func:`collate_usable`.
    """

    def __init__(self, items: Sequence[Union[Path, bytes]], targets: Sequence[int], transform: Callable,
                 skip_unusable: bool = False):
        self.items, self.targets, self.transform = list(items), list(targets), transform
        self.skip_unusable = skip_unusable

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        if not self.skip_unusable:
            return self.transform(open_image(self.items[i])), self.targets[i]
        try:
            image = open_image(self.items[i])
        except UnusableImage as exc:
            return Unusable(i, exc.reason)
        except Exception:  # noqa: BLE001 - as clipkd.data.decode.decode_record: any decoder failure is bad_image
            return Unusable(i, "bad_image")
        return i, self.transform(image), self.targets[i]


def _default_names(images: Sequence[Union[Path, bytes]]) -> list[str]:
    return [f"image {i}" if isinstance(image, bytes) else str(image) for i, image in enumerate(images)]


@dataclass
class LabelledImages:
    """Zero-shot data: images (files or bytes), class indices, and the class names the data implies.

    ``names``: how each image is named in messages (its path, or ``<shard url>/<key>``); ``skipped``: records
    left out while reading the index (shard samples without an image, broken shards).
    """

    images: list[Union[Path, bytes]]
    targets: list[int]
    classnames: list[str]
    names: list[str] = field(default_factory=list)
    skipped: Skipped = field(default_factory=Skipped)

    def __post_init__(self):
        if not self.names:
            self.names = _default_names(self.images)

    def dataset(self, transform: Callable, skip_unusable: bool = False) -> Dataset:
        return FileImages(self.images, self.targets, transform, skip_unusable)


def read_lines(path: PathLike) -> list[str]:
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line]


def _label(value, where: str, label_key: str) -> int:
    """A class index from a CSV cell or a shard member, or a one-line error naming where it came from."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    try:
        label = int(text.strip())
    except ValueError:
        raise ValueError(f"{where}: label '{label_key}' must be a class index (0, 1, ...), got {text.strip()!r}") \
            from None
    if label < 0:
        raise ValueError(f"{where}: label '{label_key}' must be >= 0, got {label}")
    return label


def zeroshot_dataset(fmt: str, path: Union[str, list[str]], *, root: Optional[str] = None, image_key: str = "filepath",
                     label_key: str = "label", separator: str = ",") -> LabelledImages:
    """Labelled images and the class names the data itself implies (folder names, or '0', '1', ...).

    ``image_key``: the CSV image column; for webdataset the image member's extension, or None (or the CSV
    default ``filepath``) to take the first of ``jpg``, ``jpeg``, ``png``, ``webp``.
    """
    if fmt == "folder":
        folder = ImageFolder(str(path))
        return LabelledImages([Path(p) for p, _ in folder.samples], list(folder.targets),
                              [c.replace("_", " ") for c in folder.classes])
    if fmt == "csv":
        rows = read_csv_rows(Path(str(path)), separator, (image_key, label_key))
        if not rows:
            raise ValueError(f"{path}: no rows")
        base = Path(root) if root else Path(str(path)).parent
        labels = [_label(r[label_key], f"{path}, row {i + 1}", label_key) for i, r in enumerate(rows)]
        return LabelledImages([base / r[image_key] for r in rows], labels, [str(i) for i in range(max(labels) + 1)])
    if fmt == "webdataset":
        items, labels, names, skipped = [], [], [], Skipped()
        for sample in _shard_samples(path, skipped):
            key = _sample_name(sample)
            image = _sample_image(sample, image_key)
            if label_key not in sample:
                continue  # not a labelled sample (as before: left out, not counted)
            if image is None:
                skipped.add(key, "missing_image")
                continue
            items.append(image)
            labels.append(_label(sample[label_key], key, label_key))
            names.append(key)
        if not items:
            if skipped.count:
                raise _none_usable(str(path), skipped.count, skipped)
            raise ValueError(f"{path}: no sample with an image and a '{label_key}' key")
        return LabelledImages(items, labels, [str(i) for i in range(max(labels, default=0) + 1)], names, skipped)
    raise ValueError(f"unknown zero-shot dataset format '{fmt}'")


def _sample_name(sample: dict) -> str:
    """A shard sample as the training data names it: ``<shard url>/<key>``."""
    return _printable(f"{sample.get('__url__')}/{sample.get('__key__')}")


def _sample_image(sample: dict, image_key: Optional[str]) -> Optional[bytes]:
    if image_key and image_key != "filepath":  # "filepath" is the CSV default, not a shard member
        return sample.get(image_key)
    return next((sample[k] for k in IMAGE_KEYS if k in sample), None)


def _shard_samples(urls: Union[str, list[str]], skipped: Skipped):
    """Every sample of the shards; a broken shard is counted in ``skipped`` (``shard_error``), not raised."""
    import webdataset as wds

    errors: list[str] = []

    def handler(exc: Exception) -> bool:
        errors.append(str(exc))
        return True  # as the training data: skip the rest of a broken shard, keep going

    for sample in wds.tariterators.tarfile_samples([{"url": u} for u in expand_shards(urls)], handler=handler):
        while errors:
            skipped.add(errors.pop(0)[:300], "shard_error")
        yield sample
    while errors:
        skipped.add(errors.pop(0)[:300], "shard_error")


@dataclass
class CaptionedImages:
    """Retrieval data: images (files or bytes), all captions, and each caption's image index.

    ``names`` and ``skipped`` as in :class:`LabelledImages` (``skipped`` also holds images without a caption).
    """

    images: list[Union[Path, bytes]]
    captions: list[str]
    text_to_image: torch.Tensor
    names: list[str] = field(default_factory=list)
    skipped: Skipped = field(default_factory=Skipped)

    def __post_init__(self):
        if not self.names:
            self.names = _default_names(self.images)

    def image_dataset(self, transform: Callable, skip_unusable: bool = False) -> Dataset:
        return FileImages(self.images, [0] * len(self.images), transform, skip_unusable)

    def without(self, unusable: Sequence[int]) -> tuple[list[int], list[int]]:
        """The images kept when ``unusable`` (image indices) are dropped, and the captions kept with them."""
        bad = set(unusable)
        keep = [i for i in range(len(self.images)) if i not in bad]
        return keep, [t for t, owner in enumerate(self.text_to_image.tolist()) if owner not in bad]


def _group(pairs: Sequence[tuple[Union[Path, bytes], Sequence[str], str]], skipped: Optional[Skipped] = None
           ) -> CaptionedImages:
    """``(image, captions, name)`` -> :class:`CaptionedImages`; images without a caption are counted."""
    skipped = skipped if skipped is not None else Skipped()
    images, captions, owner, names = [], [], [], []
    for image, caps, name in pairs:
        usable = [c.strip() for c in caps if c and c.strip()]
        if not usable:
            skipped.add(name, "empty_caption" if caps else "missing_caption")
            continue
        owner.extend([len(images)] * len(usable))
        images.append(image)
        names.append(name)
        captions.extend(usable)
    if not images:
        if skipped.count:
            raise _none_usable("retrieval dataset", skipped.count, skipped)
        raise ValueError("retrieval dataset has no image with a caption")
    return CaptionedImages(images, captions, torch.tensor(owner, dtype=torch.long), names, skipped)


def retrieval_dataset(fmt: str, path: Union[str, list[str]], *, root: Optional[str] = None,
                      split: Optional[str] = "test",
                      image_key: str = "filepath", caption_key: Optional[str] = "title",
                      separator: str = ",") -> CaptionedImages:
    """Images with one or more captions each, from a Karpathy JSON, a CSV or webdataset shards.

    For webdataset, ``image_key`` / ``caption_key`` name the sample members; None (or the CSV defaults
    ``filepath`` / ``title``) means: the first image member of ``jpg``, ``jpeg``, ``png``, ``webp``, and the
    captions of ``json`` or else ``txt``.
    """
    if fmt == "karpathy":
        return _karpathy(Path(str(path)), Path(root) if root else Path(str(path)).parent, split)
    if fmt == "csv":
        rows = read_csv_rows(Path(str(path)), separator, (image_key, caption_key))
        base = Path(root) if root else Path(str(path)).parent
        grouped: dict[str, list[str]] = {}
        for r in rows:
            grouped.setdefault(r[image_key], []).append(r[caption_key] or "")
        return _group([(base / k, v, str(base / k)) for k, v in grouped.items()])
    if fmt == "webdataset":
        pairs, skipped = [], Skipped()
        for sample in _shard_samples(path, skipped):
            image = _sample_image(sample, image_key)
            if image is None:
                skipped.add(_sample_name(sample), "missing_image")
                continue
            pairs.append((image, _sample_captions(sample, caption_key), _sample_name(sample)))
        return _group(pairs, skipped)
    raise ValueError(f"unknown retrieval dataset format '{fmt}'")


def _sample_captions(sample: dict, caption_key: Optional[str] = None) -> list[str]:
    key = caption_key if caption_key and caption_key != "title" else None  # "title" is the CSV default
    if key is None:
        key = "json" if "json" in sample else "txt" if "txt" in sample else None
    if key is None or key not in sample:
        return []
    value = sample[key]
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    if key.endswith("json"):
        try:
            obj = json.loads(text)
        except ValueError:
            return []
        caps = obj.get("captions", obj.get("caption", [])) if isinstance(obj, dict) else obj
        return [caps] if isinstance(caps, str) else [str(c) for c in caps]
    return text.splitlines()


def _karpathy(path: Path, root: Path, split: Optional[str]) -> CaptionedImages:
    if not path.is_file():
        raise FileNotFoundError(f"Karpathy split file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a Karpathy split JSON ({exc})") from None
    entries = data.get("images") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ValueError(f"{path}: not a Karpathy split JSON (expected a list of images, or {{'images': [...]}})")
    pairs, skipped = [], Skipped()
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or (split and e.get("split") != split):
            continue
        if not e.get("filename"):
            skipped.add(f"{path}: images.{i}", "missing_image")
            continue
        image = root / e.get("filepath", "") / e["filename"]
        captions = [s.get("raw", "") if isinstance(s, dict) else str(s) for s in e.get("sentences", [])]
        pairs.append((image, captions, str(image)))
    return _group(pairs, skipped)


def account_unusable(what: str, names: Sequence[str], listed: Skipped, unusable: Sequence[tuple[int, str]]
                     ) -> Skipped:
    """Every skipped image of an eval set: those left out of the index (``listed``) and those that did not decode
    (``unusable``: ``(index, reason)``, ``names[index]`` naming them). Raises
    :class:`~clipkd.errors.DataQualityError`, naming the first, when no image at all is usable."""
    skipped = Skipped()
    skipped.extend(listed)
    for index, reason in unusable:
        skipped.add(names[index], reason)
    if len(unusable) >= len(names):
        raise _none_usable(what, len(names) + listed.count, skipped)
    return skipped


def _none_usable(what: str, total: int, skipped: Skipped) -> DataQualityError:
    first, reason = skipped.examples[0] if skipped.examples else ("?", "?")
    reasons = ", ".join(f"{r}: {n}" for r, n in sorted(skipped.counts.items()))
    return DataQualityError(f"{what}: no usable image: all {total} were skipped ({reasons}); the first: {first} "
                            f"({reason})")
