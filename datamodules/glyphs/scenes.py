"""Method A's multi-label glyph scenes: photo-style scenes of 1-3 glyphs with CSV lists."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from .output import atomic_generate, run_tasks, split_bounds, write_image_lists
from .render import render_scene, save_png
from .shapes import class_name, class_spec

_SCENE, _SPLIT = 2, 3


def _scene_labels(seed: int, i: int, num_classes: int, lo: int, hi: int) -> list[int]:
    rng = np.random.default_rng([seed, _SPLIT, i])
    k = int(rng.integers(lo, hi + 1))
    return sorted(int(c) for c in rng.choice(num_classes, min(k, num_classes), replace=False))


def _scene_task(args) -> int:
    root, seed, start, stop, num_classes, lo, hi, image_size = args
    specs = [class_spec(seed, c) for c in range(num_classes)]
    for i in range(start, stop):
        labels = _scene_labels(seed, i, num_classes, lo, hi)
        rng = np.random.default_rng([seed, _SCENE, i])
        order = rng.permutation(len(labels))
        save_png(
            render_scene([specs[labels[j]] for j in order], rng, image_size),
            Path(root) / "images" / f"{i:05d}.png",
        )
    return stop - start


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
    if not 1 <= min_objects <= max_objects:
        raise ValueError("need 1 <= min_objects <= max_objects")
    params = {
        "num_classes": int(num_classes),
        "num_train": int(num_train),
        "num_query": int(num_query),
        "num_database": int(num_database),
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
            (str(tmp), seed, s, min(s + chunk, total), num_classes, min_objects, max_objects, image_size)
            for s in range(0, total, chunk)
        ]
        run_tasks(_scene_task, tasks, workers)
        names = [class_name(c) for c in range(num_classes)]
        write_image_lists(
            tmp,
            names,
            split_bounds(num_train, num_query, num_database),
            lambda i: _scene_labels(seed, i, num_classes, min_objects, max_objects),
        )
        return {
            "layout": "csv",
            "classes": names,
            "counts": {
                "classes": num_classes,
                "train": num_train,
                "query": num_query,
                "database": num_database,
            },
        }

    return atomic_generate(out_dir, "scenes", params, overwrite, build)
