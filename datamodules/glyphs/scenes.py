"""Method A's multi-label glyph scenes: photo-style scenes of 1-3 glyphs with CSV lists."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import numpy as np

from .output import make_csv_dataset, params_of
from .render import render_scene
from .shapes import class_name, class_spec

_SCENE, _SPLIT = 2, 3


def _scene_labels(seed: int, i: int, num_classes: int, lo: int, hi: int) -> list[int]:
    rng = np.random.default_rng([seed, _SPLIT, i])
    k = int(rng.integers(lo, hi + 1))
    return sorted(int(c) for c in rng.choice(num_classes, min(k, num_classes), replace=False))


def _scene_setup(seed: int, num_classes: int, lo: int, hi: int, image_size: int):
    specs = [class_spec(seed, c) for c in range(num_classes)]

    def draw(i: int):
        labels = _scene_labels(seed, i, num_classes, lo, hi)
        rng = np.random.default_rng([seed, _SCENE, i])
        order = rng.permutation(len(labels))
        return render_scene([specs[labels[j]] for j in order], rng, image_size)

    return draw


def make_glyph_scenes(
    out_dir: str | os.PathLike,
    *,
    num_classes: int = 20,
    num_train: int = 1000,
    num_query: int = 200,
    num_database: int = 1000,
    min_objects: int = 1,
    max_objects: int = 3,
    image_size: int = 64,
    seed: int = 0,
    workers: int = 1,
    overwrite: bool = False,
) -> Path:
    """Write the multi-label glyph scenes (``images/``, ``{train,query,database}.csv``, ``classes.txt``).

    CSV lines are ``images/00000.png,glyph_003;glyph_011`` (path relative to the root, labels are class
    names). The three splits are disjoint images drawn the same way.
    """
    params = params_of(locals())
    if not 1 <= min_objects <= max_objects:
        raise ValueError("need 1 <= min_objects <= max_objects")
    return make_csv_dataset(
        out_dir,
        "scenes",
        params,
        names=[class_name(c) for c in range(num_classes)],
        setup=partial(_scene_setup, seed, num_classes, min_objects, max_objects, image_size),
        labels_of=lambda i: _scene_labels(seed, i, num_classes, min_objects, max_objects),
        workers=workers,
        overwrite=overwrite,
    )
