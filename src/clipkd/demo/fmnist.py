"""Fashion-MNIST as a tiny image-caption data set: single items and two-item scenes with varied captions.

Images are 56x56 RGB: a single item is the 28x28 picture upscaled x2 (nearest); a scene puts two 28x28 items
side by side at the vertical centre. Train and held-out (val/test) captions use disjoint phrasings, so the text
side has to generalise. Everything is deterministic given the seed.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np
from PIL import Image

DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
CLASSNAMES = ["t-shirt", "pair of trousers", "pullover", "dress", "coat",
              "sandal", "shirt", "sneaker", "bag", "ankle boot"]

TRAIN_TEMPLATES = [
    "a photo of a {}.", "a grayscale picture of a {}", "product shot: {}", "a small low-resolution photo of a {}.",
    "a black and white image of a {}", "this is a {}.", "{} on a black background", "a close-up of a {}",
    "a picture of the {}.", "fashion item: {}",
]
TEST_TEMPLATES = [
    "an image showing a {}", "catalogue photo of one {}", "there is a {} in this picture.",
    "a single {}, photographed in monochrome", "look at this {}",
]
PROMPT_TEMPLATES = TEST_TEMPLATES[:3]
TRAIN_PAIR_TEMPLATES = [
    "a {a} on the left and a {b} on the right", "{a} next to {b}, left to right",
    "on the right a {b}, on the left a {a}", "two items: a {a} and then a {b}", "left: {a}. right: {b}.",
]
TEST_PAIR_TEMPLATES = [
    "a {a} to the left of a {b}", "a {b} to the right of a {a}", "from left to right: {a}, {b}",
]

SIZE = 56
_ITEM = 28
_FILES = {"images": ("idx3-ubyte", 2051), "labels": ("idx1-ubyte", 2049)}
_PREFIX = {"train": "train", "test": "t10k"}


class SourceMissing(FileNotFoundError):
    """The Fashion-MNIST idx files are not where we looked."""


@dataclass
class Sample:
    """One image-caption pair; ``label`` is -1 and ``scene`` holds (left, right) classes for scenes."""

    key: str
    image: Image.Image
    caption: str
    label: int
    scene: Optional[tuple[int, int]] = None


def _find(source: Path, name: str) -> Path:
    """``name.gz`` or ``name`` in ``source``; SourceMissing (with how to get it) when neither exists."""
    for path in (source / f"{name}.gz", source / name):
        if path.is_file():
            return path
    raise SourceMissing(
        f"Fashion-MNIST file {name}(.gz) not found in {source}. Install it with "
        "`apt-get install -y dataset-fashion-mnist` (Debian/Ubuntu), or pass `--source DIR` with the four idx "
        "files (train/t10k images-idx3 and labels-idx1, optionally gzip'd).")


def _read_bytes(path: Path) -> bytes:
    """File contents, gunzipped when the name ends in .gz; ValueError naming the file if unreadable."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}: cannot read ({exc})") from exc


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an idx file (uint8 data) and check its magic number and size."""
    data = _read_bytes(path)
    ndim = magic & 0xFF
    header = 4 * (1 + ndim)
    if len(data) < header or struct.unpack(">I", data[:4])[0] != magic:
        raise ValueError(f"{path}: not an idx file with magic number {magic}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) != header + int(np.prod(dims)):
        raise ValueError(f"{path}: size {len(data)} does not match header dimensions {dims}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def load_split(source: Optional[Path], split: Literal["train", "test"]) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 28, 28] and labels int64 [N] of the "train" or "test" (t10k) split."""
    source = Path(source) if source is not None else DEFAULT_SOURCE
    if split not in _PREFIX:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    paths = {kind: _find(source, f"{_PREFIX[split]}-{kind}-{suffix}") for kind, (suffix, _) in _FILES.items()}
    images = _read_idx(paths["images"], _FILES["images"][1])
    labels = _read_idx(paths["labels"], _FILES["labels"][1]).astype(np.int64)
    if images.shape[1:] != (_ITEM, _ITEM):
        raise ValueError(f"{paths['images']}: images are {images.shape[1:]}, expected 28x28")
    if len(labels) != len(images):
        raise ValueError(f"{paths['labels']}: {len(labels)} labels for {len(images)} images")
    if len(labels) and labels.max() >= len(CLASSNAMES):
        raise ValueError(f"{paths['labels']}: label {labels.max()} out of range")
    return images, labels


def _rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2), mode="RGB")


def render_single(item: np.ndarray) -> Image.Image:
    """A 28x28 item upscaled x2 (nearest) to a 56x56 RGB image."""
    return _rgb(item.repeat(2, axis=0).repeat(2, axis=1))


def render_scene(left: np.ndarray, right: np.ndarray) -> Image.Image:
    """Two 28x28 items side by side at the vertical centre of a black 56x56 RGB canvas."""
    canvas = np.zeros((SIZE, SIZE), dtype=np.uint8)
    top = (SIZE - _ITEM) // 2
    canvas[top:top + _ITEM, :_ITEM] = left
    canvas[top:top + _ITEM, _ITEM:] = right
    return _rgb(canvas)


class _Draw:
    """Indices from a pool without replacement; a fresh permutation once it runs out."""

    def __init__(self, pool: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
        self.pool, self.labels, self.rng = pool, labels, rng
        self.queue: list[int] = []
        self.deferred: list[int] = []  # skipped because of their class; used first later

    def take(self, avoid: Optional[int] = None) -> int:
        """Next index whose class is not ``avoid``."""
        for j, idx in enumerate(self.deferred):
            if int(self.labels[idx]) != avoid:
                return self.deferred.pop(j)
        while True:
            if not self.queue:
                self.queue = [int(i) for i in self.rng.permutation(self.pool)[::-1]]
            idx = self.queue.pop()
            if int(self.labels[idx]) != avoid:
                return idx
            self.deferred.append(idx)


def make_split(images: np.ndarray, labels: np.ndarray, *, count: int, scene_fraction: float,
               templates: Sequence[str], pair_templates: Sequence[str], seed: int, key_prefix: str,
               start: int = 0) -> list[Sample]:
    """``count`` samples from ``images[start:]``, ``round(count * scene_fraction)`` of them two-item scenes."""
    if count < 0 or not 0.0 <= scene_fraction <= 1.0:
        raise ValueError(f"need count >= 0 and 0 <= scene_fraction <= 1 (got {count}, {scene_fraction})")
    pool = np.arange(start, len(images))
    n_scenes = round(count * scene_fraction)
    if count and not len(pool):
        raise ValueError(f"no images after start={start}")
    if n_scenes and len(np.unique(labels[pool])) < 2:
        raise ValueError("scenes need items of at least two classes")
    rng = np.random.default_rng(seed)
    is_scene = np.array([True] * n_scenes + [False] * (count - n_scenes))
    rng.shuffle(is_scene)
    draw = _Draw(pool, labels, rng)
    samples = []
    for i, scene in enumerate(is_scene):
        key = f"{key_prefix}-{i:06d}"
        if scene:
            left = draw.take()
            right = draw.take(avoid=int(labels[left]))
            a, b = int(labels[left]), int(labels[right])
            caption = pair_templates[rng.integers(len(pair_templates))].format(a=CLASSNAMES[a], b=CLASSNAMES[b])
            samples.append(Sample(key, render_scene(images[left], images[right]), caption, -1, (a, b)))
        else:
            idx = draw.take()
            label = int(labels[idx])
            caption = templates[rng.integers(len(templates))].format(CLASSNAMES[label])
            samples.append(Sample(key, render_single(images[idx]), caption, label))
    return samples


def _seed(seed: int, split: int) -> int:
    return int(np.random.SeedSequence([seed, split]).generate_state(1)[0])


SPLITS = ("train", "teacher", "val", "val_zeroshot", "test", "test_zeroshot")


def build_splits(source: Optional[Path], *, train: int, val: int, test: int, scene_fraction: float = 0.3,
                 seed: int = 0, teacher: Optional[int] = None, test_zeroshot: Optional[int] = None
                 ) -> dict[str, list[Sample]]:
    """train/teacher/val/val_zeroshot from the idx train split (the val splits from its last ``val`` items), test
    and test_zeroshot from t10k. The ``*_zeroshot`` splits hold single items only (a class each).

    ``teacher``: the pairs the demo teacher learns from, drawn (with other captions and scenes than ``train``'s)
    from every training item but val's: by default as many pairs as there are such items, far more than the
    students' ``train``; 0: none. ``test_zeroshot``: its size (default ``test``; 10,000 is every t10k item once).
    """
    images, labels = load_split(source, "train")
    if not 0 <= val < len(images):
        raise ValueError(f"val must be in [0, {len(images)}), got {val}")
    cut = len(images) - val
    held = dict(templates=TEST_TEMPLATES, pair_templates=TEST_PAIR_TEMPLATES)
    known = dict(templates=TRAIN_TEMPLATES, pair_templates=TRAIN_PAIR_TEMPLATES, scene_fraction=scene_fraction)
    splits = {
        "train": make_split(images[:cut], labels[:cut], count=train, seed=_seed(seed, 0), key_prefix="train",
                            **known),
        "teacher": make_split(images[:cut], labels[:cut], count=cut if teacher is None else teacher,
                              seed=_seed(seed, 5), key_prefix="teacher", **known),
        "val": make_split(images, labels, count=val, scene_fraction=scene_fraction, seed=_seed(seed, 1),
                          key_prefix="val", start=cut, **held),
        "val_zeroshot": make_split(images, labels, count=val, scene_fraction=0.0, seed=_seed(seed, 4),
                                   key_prefix="val_zeroshot", start=cut, **held),
    }
    images, labels = load_split(source, "test")
    splits["test"] = make_split(images, labels, count=test, scene_fraction=scene_fraction, seed=_seed(seed, 2),
                                key_prefix="test", **held)
    splits["test_zeroshot"] = make_split(images, labels, count=test if test_zeroshot is None else test_zeroshot,
                                         scene_fraction=0.0, seed=_seed(seed, 3), key_prefix="test_zeroshot", **held)
    return splits


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def write_shards(samples: list[Sample], out_dir: Path, per_shard: int = 1000) -> list[str]:
    """Write samples as webdataset shards ``out_dir/shard-%05d.tar`` (old shards there are removed)."""
    import webdataset as wds

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("shard-*.tar"):
        old.unlink()
    if not samples:
        return []
    pattern = str(out_dir).replace("%", "%%") + "/shard-%05d.tar"
    with wds.ShardWriter(pattern, maxcount=per_shard, verbose=0) as sink:
        for s in samples:
            record = {"__key__": s.key, "png": _png(s.image), "txt": s.caption}
            if s.scene is None:
                record["cls"] = str(s.label)
            sink.write(record)
    return sorted(str(p) for p in out_dir.glob("shard-*.tar"))


def _params(source: Path, train: int, val: int, test: int, seed: int, scene_fraction: float,
            teacher: Optional[int], test_zeroshot: Optional[int]) -> dict:
    return {"splits": list(SPLITS), "train": train, "val": val, "test": test, "seed": seed, "teacher": teacher,
            "test_zeroshot": test_zeroshot,
            "scene_fraction": scene_fraction,
            "source": str(source), "classnames": CLASSNAMES, "templates": TRAIN_TEMPLATES,
            "test_templates": TEST_TEMPLATES, "pair_templates": TRAIN_PAIR_TEMPLATES,
            "test_pair_templates": TEST_PAIR_TEMPLATES, "prompt_templates": PROMPT_TEMPLATES}


def _cached(out_dir: Path, params: dict) -> Optional[dict[str, list[str]]]:
    """The manifest's shard lists when it was written with ``params`` and all its shards exist."""
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("params") != params:
        return None
    splits = {name: [str(out_dir / rel) for rel in rels] for name, rels in manifest.get("splits", {}).items()}
    return splits if all(Path(p).is_file() for ps in splits.values() for p in ps) else None


def prepare_dataset(out_dir: Path, source: Optional[Path], *, train: int, val: int, test: int, seed: int = 0,
                    scene_fraction: float = 0.3, teacher: Optional[int] = None,
                    test_zeroshot: Optional[int] = None) -> dict[str, list[str]]:
    """Build (or reuse, when the manifest matches) shards for every split under ``out_dir/<split>/``
    (:func:`build_splits` says what each holds)."""
    out_dir = Path(out_dir)
    params = _params(Path(source) if source is not None else DEFAULT_SOURCE, train, val, test, seed,
                     scene_fraction, teacher, test_zeroshot)
    cached = _cached(out_dir, params)
    if cached is not None:
        return cached
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "manifest.json").unlink(missing_ok=True)  # an interrupted build must not look finished
    splits = build_splits(source, train=train, val=val, test=test, scene_fraction=scene_fraction, seed=seed,
                          teacher=teacher, test_zeroshot=test_zeroshot)
    shards = {name: write_shards(samples, out_dir / name) for name, samples in splits.items()}
    (out_dir / "classnames.txt").write_text("\n".join(CLASSNAMES) + "\n", encoding="utf-8")
    (out_dir / "prompts.txt").write_text("\n".join(PROMPT_TEMPLATES) + "\n", encoding="utf-8")
    rel = {name: [str(Path(p).relative_to(out_dir)) for p in ps] for name, ps in shards.items()}
    tmp = out_dir / "manifest.json.tmp"
    tmp.write_text(json.dumps({"params": params, "splits": rel}, indent=2), encoding="utf-8")
    tmp.replace(out_dir / "manifest.json")
    return shards
