"""Method A's multi-label glyph scenes: photo-style scenes of 1-3 glyphs with CSV lists."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .output import CsvSettings, make_csv_dataset
from .render import render_scene
from .shapes import class_name, class_spec

_SCENE, _SPLIT = 2, 3


def _scene_labels(s: SceneSettings, i: int) -> list[int]:
    rng = np.random.default_rng([s.seed, _SPLIT, i])
    k = int(rng.integers(s.min_objects, s.max_objects + 1))
    return sorted(int(c) for c in rng.choice(s.num_classes, min(k, s.num_classes), replace=False))


def _scene_setup(s: SceneSettings):
    specs = [class_spec(s.seed, c) for c in range(s.num_classes)]

    def draw(i: int):
        labels = _scene_labels(s, i)
        rng = np.random.default_rng([s.seed, _SCENE, i])
        order = rng.permutation(len(labels))
        return render_scene([specs[labels[j]] for j in order], rng, s.image_size)

    return draw


@dataclass(frozen=True)
class SceneSettings(CsvSettings):
    """:func:`make_glyph_scenes`' settings: ``min_objects``–``max_objects`` of ``num_classes`` glyph classes
    a scene."""

    num_classes: int = 20
    min_objects: int = 1
    max_objects: int = 3


def make_glyph_scenes(out_dir: str | os.PathLike, **settings: Any) -> Path:
    """Write the multi-label glyph scenes (``images/``, ``{train,query,database}.csv``, ``classes.txt``);
    ``settings``: the fields of :class:`SceneSettings`.

    CSV lines are ``images/00000.png,glyph_003;glyph_011`` (path relative to the root, labels are class
    names). The three splits are disjoint images drawn the same way.
    """
    s = SceneSettings.of(settings)
    if not 1 <= s.min_objects <= s.max_objects:
        raise ValueError("need 1 <= min_objects <= max_objects")
    return make_csv_dataset(
        out_dir,
        "scenes",
        s,
        names=[class_name(c) for c in range(s.num_classes)],
        setup=partial(_scene_setup, s),
        labels_of=partial(_scene_labels, s),
    )
