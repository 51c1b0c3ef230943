"""Evaluation datasets: labelled images for zero-shot classification, multi-caption images for retrieval.

Zero-shot: an image folder (one subfolder per class, ImageNet's validation layout), a CSV of path and label,
or webdataset shards with a class-index key. Retrieval: a COCO/Flickr30k Karpathy-split JSON, a CSV with one
row per (image, caption) (several rows per image), or webdataset shards whose caption entry holds several
captions (``txt``: one per line; ``json``: a list or ``{"captions": [...]}``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

from clipkd.data.sources import IMAGE_KEYS, expand_shards, open_image, read_csv_rows

PathLike = Union[str, Path]


class FileImages(Dataset):
    """Images from a list of files (or in-memory bytes) with integer targets, through ``transform``."""

    def __init__(self, items: Sequence[Union[Path, bytes]], targets: Sequence[int], transform: Callable):
        self.items, self.targets, self.transform = list(items), list(targets), transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.transform(open_image(self.items[i])), self.targets[i]


@dataclass
class LabelledImages:
    """Zero-shot data: images (files or bytes), class indices, and the class names the data implies."""

    images: list[Union[Path, bytes]]
    targets: list[int]
    classnames: list[str]

    def dataset(self, transform: Callable) -> Dataset:
        return FileImages(self.images, self.targets, transform)


def _read_lines(path: PathLike) -> list[str]:
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line]


def zeroshot_dataset(fmt: str, path: Union[str, list[str]], *, root: Optional[str] = None, image_key: str = "filepath",
                     label_key: str = "label", separator: str = ",") -> LabelledImages:
    """Labelled images and the class names the data itself implies (folder names, or '0', '1', ...)."""
    if fmt == "folder":
        folder = ImageFolder(str(path))
        return LabelledImages([Path(p) for p, _ in folder.samples], list(folder.targets),
                              [c.replace("_", " ") for c in folder.classes])
    if fmt == "csv":
        rows = read_csv_rows(Path(str(path)), separator, (image_key, label_key))
        base = Path(root) if root else Path(str(path)).parent
        labels = [int(r[label_key]) for r in rows]
        return LabelledImages([base / r[image_key] for r in rows], labels, [str(i) for i in range(max(labels) + 1)])
    if fmt == "webdataset":
        items, labels = [], []
        for sample in _shard_samples(path):
            image = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
            if image is not None and label_key in sample:
                items.append(image)
                labels.append(int(sample[label_key]))
        if not items:
            raise ValueError(f"{path}: no sample with an image and a '{label_key}' key")
        return LabelledImages(items, labels, [str(i) for i in range(max(labels) + 1)])
    raise ValueError(f"unknown zero-shot dataset format '{fmt}'")


def _shard_samples(urls: Union[str, list[str]]):
    import webdataset as wds

    yield from wds.tariterators.tarfile_samples([{"url": u} for u in expand_shards(urls)])


@dataclass
class CaptionedImages:
    """Retrieval data: images (files or bytes), all captions, and each caption's image index."""

    images: list[Union[Path, bytes]]
    captions: list[str]
    text_to_image: torch.Tensor

    def image_dataset(self, transform: Callable) -> Dataset:
        return FileImages(self.images, [0] * len(self.images), transform)


def _group(pairs: Sequence[tuple[Union[Path, bytes], Sequence[str]]]) -> CaptionedImages:
    images, captions, owner = [], [], []
    for image, caps in pairs:
        caps = [c.strip() for c in caps if c and c.strip()]
        if not caps:
            continue
        owner.extend([len(images)] * len(caps))
        images.append(image)
        captions.extend(caps)
    if not images:
        raise ValueError("retrieval dataset has no image with a caption")
    return CaptionedImages(images, captions, torch.tensor(owner, dtype=torch.long))


def retrieval_dataset(fmt: str, path: Union[str, list[str]], *, root: Optional[str] = None, split: Optional[str] = "test",
                      image_key: str = "filepath", caption_key: str = "title", separator: str = ",") -> CaptionedImages:
    """Images with one or more captions each, from a Karpathy JSON, a CSV or webdataset shards."""
    if fmt == "karpathy":
        return _karpathy(Path(str(path)), Path(root) if root else Path(str(path)).parent, split)
    if fmt == "csv":
        rows = read_csv_rows(Path(str(path)), separator, (image_key, caption_key))
        base = Path(root) if root else Path(str(path)).parent
        grouped: dict[str, list[str]] = {}
        for r in rows:
            grouped.setdefault(r[image_key], []).append(r[caption_key])
        return _group([(base / k, v) for k, v in grouped.items()])
    if fmt == "webdataset":
        pairs = []
        for sample in _shard_samples(path):
            image = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
            if image is not None:
                pairs.append((image, _sample_captions(sample)))
        return _group(pairs)
    raise ValueError(f"unknown retrieval dataset format '{fmt}'")


def _sample_captions(sample: dict) -> list[str]:
    if "json" in sample:
        obj = json.loads(sample["json"])
        caps = obj.get("captions", obj.get("caption", [])) if isinstance(obj, dict) else obj
        return [caps] if isinstance(caps, str) else list(caps)
    if "txt" in sample:
        return sample["txt"].decode("utf-8").splitlines()
    return []


def _karpathy(path: Path, root: Path, split: Optional[str]) -> CaptionedImages:
    if not path.is_file():
        raise FileNotFoundError(f"Karpathy split file not found: {path}")
    data = json.loads(path.read_text(encoding="utf-8"))
    entries = data["images"] if isinstance(data, dict) else data
    pairs = []
    for e in entries:
        if split and e.get("split") != split:
            continue
        image = root / e.get("filepath", "") / e["filename"]
        pairs.append((image, [s["raw"] if isinstance(s, dict) else str(s) for s in e.get("sentences", [])]))
    return _group(pairs)


def load_classnames(spec: Optional[str], implied: list[str]) -> list[str]:
    """'imagenet' (open_clip's ImageNet-1k names), a file with one name per line, or the data's own names."""
    if spec is None:
        return implied
    if spec == "imagenet":
        from open_clip import IMAGENET_CLASSNAMES

        return list(IMAGENET_CLASSNAMES)
    return _read_lines(spec)


def load_templates(spec: Optional[str]) -> list:
    """'imagenet' (the 80 CLIP templates), 'imagenet-simple', a file (one per line with '{}'), or just '{}'."""
    if spec is None:
        return ["{}"]
    if spec in ("imagenet", "imagenet-simple"):
        from open_clip import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

        return list(OPENAI_IMAGENET_TEMPLATES if spec == "imagenet" else SIMPLE_IMAGENET_TEMPLATES)
    templates = _read_lines(spec)
    bad = [t for t in templates if "{}" not in t and "{c}" not in t]
    if bad:
        raise ValueError(f"{spec}: template(s) without a '{{}}' placeholder: {bad[:3]}")
    return [t.replace("{c}", "{}") for t in templates]
