"""Method A's multi-label glyph mosaics: a grid of single-glyph photos (2×2 by default).

Each image is ``grid × grid`` tiles. ``min_objects``–``max_objects`` tiles (chosen at random) each hold
one glyph photo of a different class, drawn like the sketch/photo benchmark's photos (filled, coloured,
textured, on a cluttered background) but large and whole (no occluder); the other tiles hold clutter only
(distractor shapes of the same primitives). The labels are the classes present. Compared with :mod:`.scenes` (1-3 small glyphs
in one cluttered picture) the objects are large and whole, so a short CPU run learns the classes, as on
real mosaic data (2×2 mosaics of item photos).

The layout is the one :class:`sketchquant.datamodules.ImageDataModule` reads: ``images/``, ``{train,query,database}.csv``
(``images/00000.png,glyph_003;glyph_007``) and ``classes.txt``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .output import CsvSettings, make_csv_dataset
from .render import background, draw_photo_object, finish_photo
from .shapes import SUPERSAMPLE, class_name, class_spec, random_transform

_MOSAIC, _LABELS = 4, 5


def mosaic_layout(seed: int, i: int, num_classes: int, cells: int, lo: int, hi: int, key: int = _LABELS):
    """``(sorted class ids, {tile: class id})`` of image ``i``; classes distinct, tiles distinct (``key``
    names the random stream: each kind of mosaic has its own)."""
    rng = np.random.default_rng([seed, key, i])
    k = min(int(rng.integers(lo, hi + 1)), num_classes, cells)
    classes = [int(c) for c in rng.choice(num_classes, k, replace=False)]
    tiles = [int(t) for t in rng.choice(cells, k, replace=False)]
    return sorted(classes), dict(zip(tiles, classes))


def render_tile(parts: list[dict] | None, rng, size: int) -> Image.Image:
    """One tile: a whole glyph photo (filled, coloured, textured; large, no occluder) on a background with
    a little clutter, or (``parts`` None) the background alone with a little more clutter."""
    if parts is None:
        return finish_photo(background(rng, size, clutter=(1, 4)), rng)
    img = background(rng, size, clutter=(0, 3))
    a, b = random_transform(rng, size * SUPERSAMPLE, rot=20, scale=(0.75, 0.95), shift=0.06)
    return finish_photo(draw_photo_object(img, parts, a, b, rng), rng)


def paste_grid(images: dict[int, Image.Image], grid: int, image_size: int, mode: str = "RGB") -> Image.Image:
    """``images[t]`` (``image_size // grid`` px) in tile ``t`` of a ``grid × grid`` black canvas (row-major),
    resized to ``image_size`` where the tiles do not fill it."""
    tile = image_size // grid
    canvas = Image.new(mode, (tile * grid, tile * grid))
    for t, img in images.items():
        canvas.paste(img, ((t % grid) * tile, (t // grid) * tile))
    if canvas.size != (image_size, image_size):
        canvas = canvas.resize((image_size, image_size), Image.BILINEAR)
    return canvas


def render_mosaic(specs: list[list[dict]], tiles: dict[int, int], rng, image_size: int, grid: int):
    tile = image_size // grid
    images = {t: render_tile(specs[tiles[t]] if t in tiles else None, rng, tile) for t in range(grid * grid)}
    return paste_grid(images, grid, image_size)


def _mosaic_setup(s: GlyphMosaicSettings):
    specs = [class_spec(s.seed, c) for c in range(s.num_classes)]

    def draw(i: int):
        _, tiles = _layout(s, i)
        return render_mosaic(specs, tiles, np.random.default_rng([s.seed, _MOSAIC, i]), s.image_size, s.grid)

    return draw


def _layout(s: GlyphMosaicSettings, i: int):
    return mosaic_layout(s.seed, i, s.num_classes, s.grid * s.grid, s.min_objects, s.max_objects)


@dataclass(frozen=True)
class MosaicSettings(CsvSettings):
    """A mosaic set's: ``grid × grid`` tiles, ``min_objects``–``max_objects`` of them holding an object."""

    grid: int = 2
    min_objects: int = 1
    max_objects: int = 2

    def check_objects(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects <= self.grid * self.grid:
            raise ValueError(f"need 1 <= min_objects <= max_objects <= grid*grid ({self.grid * self.grid})")


@dataclass(frozen=True)
class GlyphMosaicSettings(MosaicSettings):
    """:func:`make_glyph_mosaics`' settings: ``num_classes`` glyph classes."""

    num_classes: int = 10
    num_train: int = 1200


def make_glyph_mosaics(out_dir: str | os.PathLike, **settings: Any) -> Path:
    """Write the multi-label glyph mosaics (``images/``, ``{train,query,database}.csv``, ``classes.txt``);
    ``settings``: the fields of :class:`GlyphMosaicSettings`.

    An existing folder whose manifest matches is returned as it is; ``workers`` > 1 renders in parallel
    processes and gives the same bytes."""
    s = GlyphMosaicSettings.of(settings)
    if s.grid < 1:
        raise ValueError(f"grid must be >= 1, got {s.grid}")
    s.check_objects()
    if s.image_size < 8 * s.grid:
        raise ValueError(f"image_size {s.image_size} is too small for a {s.grid}x{s.grid} grid")
    return make_csv_dataset(
        out_dir,
        "mosaics",
        s,
        names=[class_name(c) for c in range(s.num_classes)],
        setup=partial(_mosaic_setup, s),
        labels_of=lambda i: _layout(s, i)[0],
    )
