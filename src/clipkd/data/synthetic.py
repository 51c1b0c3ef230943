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
