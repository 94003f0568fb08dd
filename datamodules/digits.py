"""A real-image multi-label set that installs offline: 2×2 mosaics of scikit-learn's bundled digits.

``sklearn.datasets.load_digits`` ships 1,797 real handwritten digits (8×8 greyscale scans, 10 classes)
inside the scikit-learn package (a dependency of ``sweeps``, so every install of sketchquant has it; no
download). Each mosaic is ``grid × grid`` tiles; ``min_objects``–``max_objects`` tiles hold a digit of a
different class, the others stay black; the labels are the digits present. The source digits are split
once (``seed``) so train mosaics and query/database mosaics never share a scanned digit.

``sketchquant data make --kind digits`` writes the layout :class:`sketchquant.datamodules.ImageDataModule` reads
(``images/``, ``{train,query,database}.csv``, ``classes.txt``, ``dataset.json``), byte-identical per seed.
"""

from __future__ import annotations

import os
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .glyphs.mosaics import MosaicSettings, mosaic_layout, paste_grid
from .glyphs.output import make_csv_dataset

_LABELS, _PICK = 6, 7
TRAIN_SHARE = 0.6  # of the scanned digits feed the train mosaics; the rest the query/database mosaics


@lru_cache(maxsize=1)
def _digits():
    from sklearn.datasets import load_digits  # lazy: scikit-learn takes a second; only this set needs it

    d = load_digits()
    return (d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8), d.target.astype(int)


def _pools(seed: int, targets: np.ndarray) -> dict[str, dict[int, np.ndarray]]:
    """Per part (train / test) and class, the indices of the scanned digits it may use."""
    perm = np.random.default_rng([seed, _PICK]).permutation(len(targets))
    cut = int(len(perm) * TRAIN_SHARE)
    parts = {"train": np.sort(perm[:cut]), "test": np.sort(perm[cut:])}
    return {p: {c: idx[targets[idx] == c] for c in range(10)} for p, idx in parts.items()}


def _layout(s: MosaicSettings, i: int):
    return mosaic_layout(s.seed, i, 10, s.grid * s.grid, s.min_objects, s.max_objects, key=_LABELS)


def _setup(s: MosaicSettings):
    images, targets = _digits()
    pools = _pools(s.seed, targets)
    tile = s.image_size // s.grid

    def draw(i: int) -> Image.Image:
        _, tiles = _layout(s, i)
        rng = np.random.default_rng([s.seed, _PICK, i])
        pool = pools["train" if i < s.num_train else "test"]
        digits = {
            t: Image.fromarray(images[int(rng.choice(pool[c]))], "L").resize((tile, tile), Image.BICUBIC)
            for t, c in sorted(tiles.items())
        }
        return paste_grid(digits, s.grid, s.image_size, mode="L")

    return draw


def make_digit_mosaics(out_dir: str | os.PathLike, **settings: Any) -> Path:
    """Write the digit mosaics (``images/``, ``{train,query,database}.csv``, ``classes.txt`` = 0..9);
    ``settings``: the fields of :class:`~.glyphs.mosaics.MosaicSettings`."""
    s = MosaicSettings.of(settings)
    s.check_objects()
    return make_csv_dataset(
        out_dir,
        "digits",
        s,
        names=[f"digit_{c}" for c in range(10)],
        setup=partial(_setup, s),
        labels_of=lambda i: _layout(s, i)[0],
        manifest={"source": "sklearn.datasets.load_digits (UCI optical recognition of handwritten digits)"},
    )
