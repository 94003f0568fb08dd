"""The sketch/photo glyph benchmark (method B): ``sketch/<class>/``, ``photo/<class>/``, ``unseen_classes.txt``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .output import FolderSettings, make_folder_dataset
from .render import render_photo, render_sketch
from .shapes import class_name, class_spec

_PHOTO, _SKETCH = 0, 1


def _setup(seed: int, image_size: int, c: int, domain: str):
    parts = class_spec(seed, c)
    key, render = (_PHOTO, render_photo) if domain == "photo" else (_SKETCH, render_sketch)
    return lambda i: render(parts, np.random.default_rng([seed, c, key, i]), image_size)


def unseen_class_ids(seed: int, num_classes: int, num_unseen: int) -> list[int]:
    if not 0 < num_unseen < num_classes:
        raise ValueError(f"num_unseen must be in 1..{num_classes - 1}, got {num_unseen}")
    rng = np.random.default_rng([seed, 424242])
    return sorted(int(i) for i in rng.choice(num_classes, num_unseen, replace=False))


@dataclass(frozen=True)
class GlyphBenchmarkSettings(FolderSettings):
    """:func:`make_glyph_benchmark`'s settings: ``num_classes`` glyph classes, ``num_unseen`` of them held out."""

    num_classes: int = 60
    num_unseen: int = 15


def make_glyph_benchmark(out_dir: str | os.PathLike, **settings: Any) -> Path:
    """Write the sketch/photo glyph benchmark to ``out_dir`` (atomically) and return its path; ``settings``:
    the fields of :class:`GlyphBenchmarkSettings`.

    An existing folder whose manifest matches these parameters is returned as it is; a different one
    raises ``FileExistsError`` unless ``overwrite``. ``workers`` > 1 renders classes in parallel processes
    and gives the same bytes.
    """
    s = GlyphBenchmarkSettings.of(settings)
    if s.photos_per_class < 1 or s.sketches_per_class < 1:
        raise ValueError("photos_per_class and sketches_per_class must be >= 1")
    unseen = [class_name(c) for c in unseen_class_ids(s.seed, s.num_classes, s.num_unseen)]
    per_class = {"sketch": s.sketches_per_class, "photo": s.photos_per_class}
    return make_folder_dataset(
        out_dir,
        "sketch_photo",
        s,
        classes=[class_name(c) for c in range(s.num_classes)],
        unseen=unseen,
        setup=partial(_setup, s.seed, s.image_size),
        ids=lambda c, domain: range(per_class[domain]),
        manifest={
            "unseen_classes": unseen,
            "counts": {
                "classes": s.num_classes,
                "seen": s.num_classes - s.num_unseen,
                "unseen": s.num_unseen,
                "sketches": s.num_classes * s.sketches_per_class,
                "photos": s.num_classes * s.photos_per_class,
            },
        },
    )
