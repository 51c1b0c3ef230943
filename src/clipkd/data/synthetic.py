"""Procedurally drawn image-caption pairs (coloured shapes), for smoke runs and tests without a dataset."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
BACKGROUNDS = {"white": (245, 245, 245), "black": (15, 15, 15), "grey": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle")
TEMPLATES = (
    "a {c} {s} on a {b} background",
    "a photo of a {c} {s}",
    "{c} {s}, {b} backdrop",
    "there is a {s} coloured {c}",
)


@dataclass(frozen=True)
class ShapeSample:
    image: Image.Image
    caption: str
    label: int


def _draw(shape: str, colour: tuple, background: tuple, size: int, rng: random.Random) -> Image.Image:
    img = Image.new("RGB", (size, size), background)
    r = rng.uniform(0.2, 0.4) * size
    cx, cy = (rng.uniform(r, size - r) for _ in range(2))
    draw = ImageDraw.Draw(img)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return img


def shape_samples(count: int, size: int = 64, seed: int = 0) -> Iterator[ShapeSample]:
    """``count`` random shape images with varied captions; ``label`` indexes (colour, shape)."""
    rng = random.Random(seed)
    colours, backgrounds = list(COLOURS), list(BACKGROUNDS)
    for _ in range(count):
        c, s, b = rng.choice(colours), rng.choice(SHAPES), rng.choice(backgrounds)
        caption = rng.choice(TEMPLATES).format(c=c, s=s, b=b)
        label = colours.index(c) * len(SHAPES) + SHAPES.index(s)
        yield ShapeSample(_draw(s, COLOURS[c], BACKGROUNDS[b], size, rng), caption, label)


def _jpeg(image: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_shards(out_dir, count: int, per_shard: int = 64, size: int = 64, seed: int = 0) -> list[str]:
    """Write ``count`` shape samples as webdataset shards (``jpg`` + ``txt``); return the shard paths."""
    from pathlib import Path

    import webdataset as wds

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pattern = str(out / "shard-%05d.tar")
    with wds.ShardWriter(pattern, maxcount=per_shard, verbose=0) as sink:
        for i, s in enumerate(shape_samples(count, size=size, seed=seed)):
            sink.write({"__key__": f"{i:08d}", "jpg": _jpeg(s.image), "txt": s.caption, "cls": str(s.label)})
    return sorted(str(p) for p in out.glob("shard-*.tar"))


def write_csv(out_dir, count: int, size: int = 64, seed: int = 0, separator: str = ",") -> str:
    """Write ``count`` shape samples as JPEG files plus a CSV (``filepath``, ``title``); return the CSV path."""
    import csv
    from pathlib import Path

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    path = out / ("data.tsv" if separator == "\t" else "data.csv")
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=separator)
        writer.writerow(["filepath", "title"])
        for i, s in enumerate(shape_samples(count, size=size, seed=seed)):
            name = f"images/{i:06d}.jpg"
            (out / name).write_bytes(_jpeg(s.image))
            writer.writerow([name, s.caption])
    return str(path)


def natural_jpeg(width: int, height: int, seed: int = 0, quality: int = 90, grain: float = 0.0) -> bytes:
    """A JPEG with natural-image-like statistics (1/f noise: smooth random fields at every octave, coloured), for
    measuring the decode path: flat drawn shapes compress and decode unlike photographs. ``grain``: the standard
    deviation (in 8-bit levels) of per-pixel luminance noise added, a camera's fine texture: it brings the bytes per
    pixel to a photograph's (10: a 500x375 of about 75 KB, where 0 gives about 26 KB)."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    canvas = np.zeros((height, width, 3))
    size, weight = 2, 1.0
    while size < max(width, height):
        field = rng.standard_normal((size, size, 3)).astype(np.float32)
        layers = [np.asarray(Image.fromarray(field[..., c]).resize((width, height), Image.BICUBIC)) for c in range(3)]
        canvas += weight * np.stack(layers, axis=-1)
        size, weight = size * 2, weight / 1.6
    canvas = (canvas - canvas.min()) / (np.ptp(canvas) + 1e-9) * 255
    if grain:
        canvas = np.clip(canvas + grain * rng.standard_normal((height, width, 1)), 0, 255)
    out = io.BytesIO()
    Image.fromarray(canvas.astype(np.uint8)).save(out, "JPEG", quality=quality)
    return out.getvalue()
