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

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

from .glyphs.output import atomic_generate, run_tasks, split_bounds, write_image_lists
from .glyphs.render import save_png

_LABELS, _PICK = 6, 7
TRAIN_SHARE = 0.6  # of the scanned digits feed the train mosaics; the rest the query/database mosaics


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8), d.target.astype(int)


def _pools(seed: int, targets: np.ndarray) -> dict[str, dict[int, np.ndarray]]:
    """Per part (train / test) and class, the indices of the scanned digits it may use."""
    perm = np.random.default_rng([seed, _PICK]).permutation(len(targets))
    cut = int(len(perm) * TRAIN_SHARE)
    parts = {"train": np.sort(perm[:cut]), "test": np.sort(perm[cut:])}
    return {p: {c: idx[targets[idx] == c] for c in range(10)} for p, idx in parts.items()}


def _layout(seed: int, i: int, cells: int, lo: int, hi: int):
    rng = np.random.default_rng([seed, _LABELS, i])
    k = min(int(rng.integers(lo, hi + 1)), cells, 10)
    classes = [int(c) for c in rng.choice(10, k, replace=False)]
    tiles = [int(t) for t in rng.choice(cells, k, replace=False)]
    return sorted(classes), dict(zip(tiles, classes))


def _task(args) -> int:
    root, seed, start, stop, num_train, grid, lo, hi, image_size = args
    images, targets = _digits()
    pools = _pools(seed, targets)
    tile = image_size // grid
    for i in range(start, stop):
        _, tiles = _layout(seed, i, grid * grid, lo, hi)
        rng = np.random.default_rng([seed, _PICK, i])
        pool = pools["train" if i < num_train else "test"]
        canvas = Image.new("L", (tile * grid, tile * grid), 0)
        for t, c in sorted(tiles.items()):
            digit = Image.fromarray(images[int(rng.choice(pool[c]))], "L").resize((tile, tile), Image.BICUBIC)
            canvas.paste(digit, ((t % grid) * tile, (t // grid) * tile))
        if canvas.size != (image_size, image_size):
            canvas = canvas.resize((image_size, image_size), Image.BILINEAR)
        save_png(canvas, Path(root) / "images" / f"{i:05d}.png")
    return stop - start


def make_digit_mosaics(
    out_dir: str | os.PathLike,
    *,
    num_train: int = 1000,
    num_query: int = 200,
    num_database: int = 1000,
    grid: int = 2,
    min_objects: int = 1,
    max_objects: int = 2,
    image_size: int = 64,
    seed: int = 0,
    workers: int = 1,
    overwrite: bool = False,
) -> Path:
    """Write the digit mosaics (``images/``, ``{train,query,database}.csv``, ``classes.txt`` = 0..9)."""
    if not 1 <= min_objects <= max_objects <= grid * grid:
        raise ValueError(f"need 1 <= min_objects <= max_objects <= grid*grid ({grid * grid})")
    params = {
        "num_train": int(num_train),
        "num_query": int(num_query),
        "num_database": int(num_database),
        "grid": int(grid),
        "min_objects": int(min_objects),
        "max_objects": int(max_objects),
        "image_size": int(image_size),
        "seed": int(seed),
    }
    total = num_train + num_query + num_database

    def build(tmp: Path) -> dict:
        (tmp / "images").mkdir()
        chunk = max(1, math.ceil(total / max(1, workers) / 4))
        tasks = [
            (str(tmp), seed, s, min(s + chunk, total), num_train, grid, min_objects, max_objects, image_size)
            for s in range(0, total, chunk)
        ]
        run_tasks(_task, tasks, workers)
        names = [f"digit_{c}" for c in range(10)]
        write_image_lists(
            tmp,
            names,
            split_bounds(num_train, num_query, num_database),
            lambda i: _layout(seed, i, grid * grid, min_objects, max_objects)[0],
        )
        return {
            "layout": "csv",
            "classes": names,
            "source": "sklearn.datasets.load_digits (UCI optical recognition of handwritten digits)",
            "counts": {"classes": 10, "train": num_train, "query": num_query, "database": num_database},
        }

    return atomic_generate(out_dir, "digits", params, overwrite, build)
