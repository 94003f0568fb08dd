"""Real drawings that install offline, as a sketch/photo folder: a small check of method B off the glyphs.

Sketches: scikit-learn's bundled handwritten digits (``sklearn.datasets.load_digits``: 1,797 real digits
drawn by 43 people, scanned at 8×8 in 17 grey levels; shipped inside the scikit-learn package, no
download), upscaled and drawn dark on white like a sketch. Photos: each digit printed in Pillow's bundled
font, in a random colour, size, angle and place, on a textured, cluttered background (the glyph photos'
backgrounds). So the query domain is real hand drawing and the gallery a different, printed domain;
``num_unseen`` digits are held out for the zero-shot test.

``sketchquant data make --kind digit_drawings`` writes the folder layout of
:class:`sketchquant.datamodules.SketchPhotoDataModule` (``sketch/<class>/``, ``photo/<class>/``,
``unseen_classes.txt``), byte-identical per seed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from .glyphs.output import FolderSettings, make_folder_dataset
from .glyphs.render import background

CLASSES = [f"digit_{c}" for c in range(10)]


def _sketch(image: np.ndarray, size: int) -> Image.Image:
    """An 8×8 scan (0..16, ink high) → dark strokes on white, ``size`` px."""
    ink = Image.fromarray((255 - image * (255.0 / 16.0)).clip(0, 255).astype(np.uint8), "L")
    return ink.resize((size, size), Image.BICUBIC).convert("RGB")


def _photo(digit: int, rng: np.random.Generator, size: int) -> Image.Image:
    base = background(rng, size).convert("RGB")
    font = ImageFont.load_default(size=int(size * rng.uniform(0.45, 0.8)))
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    colour = tuple(int(v) for v in rng.integers(0, 256, 3)) + (255,)
    draw = ImageDraw.Draw(layer)
    box = draw.textbbox((0, 0), str(digit), font=font)
    w, h = box[2] - box[0], box[3] - box[1]
    x = (size - w) / 2 - box[0] + rng.uniform(-0.15, 0.15) * size
    y = (size - h) / 2 - box[1] + rng.uniform(-0.15, 0.15) * size
    draw.text((x, y), str(digit), font=font, fill=colour, stroke_width=int(rng.integers(0, 3)))
    layer = layer.rotate(float(rng.uniform(-25, 25)), resample=Image.BICUBIC)
    base.paste(layer, (0, 0), layer)
    return base.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.0, 0.8))))


@lru_cache(maxsize=1)
def _scans():
    from sklearn.datasets import load_digits  # lazy: scikit-learn takes a second; only this set needs it

    return load_digits()


def _setup(seed: int, image_size: int, c: int, domain: str):
    if domain == "sketch":
        return lambda i: _sketch(_scans().images[i], image_size)
    return lambda i: _photo(c, np.random.default_rng([seed, c, i]), image_size)


def unseen_digits(seed: int, num_unseen: int) -> list[int]:
    if not 0 < num_unseen < 10:
        raise ValueError(f"num_unseen must be in 1..9, got {num_unseen}")
    return sorted(int(c) for c in np.random.default_rng([seed, 31337]).choice(10, num_unseen, replace=False))


@dataclass(frozen=True)
class DigitDrawingSettings(FolderSettings):
    """:func:`make_digit_drawings`' settings: ``num_unseen`` digits held out; ``sketches_per_class`` None
    takes every scan of a digit."""

    num_unseen: int = 3
    photos_per_class: int = 60
    sketches_per_class: int | None = None


def make_digit_drawings(out_dir: str | os.PathLike, **settings: Any) -> Path:
    """Write the digit drawings: the scanned digits as sketches (all of them, about 180 per class, or the
    first ``sketches_per_class``) and ``photos_per_class`` printed photos per class; ``settings``: the
    fields of :class:`DigitDrawingSettings`."""
    s = DigitDrawingSettings.of(settings)
    if s.photos_per_class < 1:
        raise ValueError("photos_per_class must be >= 1")
    unseen = [CLASSES[c] for c in unseen_digits(s.seed, s.num_unseen)]

    def ids(c: int, domain: str):
        if domain == "photo":
            return range(s.photos_per_class)
        return np.flatnonzero(_scans().target == c)[: s.sketches_per_class]  # the scans' own numbers

    return make_folder_dataset(
        out_dir,
        "digit_drawings",
        s,
        classes=CLASSES,
        unseen=unseen,
        setup=partial(_setup, s.seed, s.image_size),
        ids=ids,
        manifest={
            "unseen": unseen,
            "source": "sklearn.datasets.load_digits (UCI handwritten digits) + Pillow's bundled font",
        },
    )
