"""The sketch/photo glyph benchmark (method B): ``sketch/<class>/``, ``photo/<class>/``, ``unseen_classes.txt``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .output import atomic_generate, run_tasks
from .render import render_photo, render_sketch, save_png
from .shapes import class_name, class_spec

_PHOTO, _SKETCH = 0, 1

# sketch / photo benchmark


def _sp_task(args) -> int:
    root, seed, c, domain, count, image_size = args
    parts = class_spec(seed, c)
    folder = Path(root) / ("photo" if domain == _PHOTO else "sketch") / class_name(c)
    folder.mkdir(parents=True, exist_ok=True)
    render = render_photo if domain == _PHOTO else render_sketch
    for i in range(count):
        rng = np.random.default_rng([seed, c, domain, i])
        save_png(render(parts, rng, image_size), folder / f"{i:04d}.png")
    return count


def unseen_class_ids(seed: int, num_classes: int, num_unseen: int) -> list[int]:
    if not 0 < num_unseen < num_classes:
        raise ValueError(f"num_unseen must be in 1..{num_classes - 1}, got {num_unseen}")
    rng = np.random.default_rng([seed, 424242])
    return sorted(int(i) for i in rng.choice(num_classes, num_unseen, replace=False))


def make_glyph_benchmark(
    out_dir: str | os.PathLike,
    *,
    num_classes: int = 60,
    num_unseen: int = 15,
    photos_per_class: int = 40,
    sketches_per_class: int = 40,
    image_size: int = 64,
    seed: int = 0,
    workers: int = 1,
    overwrite: bool = False,
) -> Path:
    """Write the sketch/photo glyph benchmark to ``out_dir`` (atomically) and return its path.

    An existing folder whose manifest matches these parameters is returned as it is; a different one
    raises ``FileExistsError`` unless ``overwrite``. ``workers`` > 1 renders classes in parallel processes
    and gives the same bytes.
    """
    if photos_per_class < 1 or sketches_per_class < 1:
        raise ValueError("photos_per_class and sketches_per_class must be >= 1")
    params = {
        "num_classes": int(num_classes),
        "num_unseen": int(num_unseen),
        "photos_per_class": int(photos_per_class),
        "sketches_per_class": int(sketches_per_class),
        "image_size": int(image_size),
        "seed": int(seed),
    }
    unseen = unseen_class_ids(seed, num_classes, num_unseen)

    def build(tmp: Path) -> dict:
        tasks = [
            (str(tmp), seed, c, d, n, image_size)
            for c in range(num_classes)
            for d, n in ((_SKETCH, sketches_per_class), (_PHOTO, photos_per_class))
        ]
        run_tasks(_sp_task, tasks, workers)
        names = [class_name(c) for c in range(num_classes)]
        unseen_names = [class_name(c) for c in unseen]
        (tmp / "unseen_classes.txt").write_text("".join(n + "\n" for n in unseen_names))
        return {
            "layout": "folder",
            "classes": names,
            "unseen_classes": unseen_names,
            "counts": {
                "classes": num_classes,
                "seen": num_classes - num_unseen,
                "unseen": num_unseen,
                "sketches": num_classes * sketches_per_class,
                "photos": num_classes * photos_per_class,
            },
        }

    return atomic_generate(out_dir, "sketch_photo", params, overwrite, build)
