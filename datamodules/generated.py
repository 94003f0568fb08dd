"""The registry of generated datasets: kind → (generator function, the layout it writes).

Used by ``sketchquant data make --kind`` (:mod:`sketchquant.datamodules.cli_data`) and by a DataModule's
``auto_generate`` (``data.generator.kind``). Generators are imported only when asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

#: kind → (module, function, layout it writes, default output folder)
GENERATORS: dict[str, tuple[str, str, str, str]] = {
    "sketch_photo": (
        "sketchquant.datamodules.glyphs.sketch_photo",
        "make_glyph_benchmark",
        "folder",
        "data/glyphs",
    ),
    "scenes": ("sketchquant.datamodules.glyphs.scenes", "make_glyph_scenes", "csv", "data/glyph_scenes"),
    "mosaics": ("sketchquant.datamodules.glyphs.mosaics", "make_glyph_mosaics", "csv", "data/glyph_mosaics"),
    "digits": ("sketchquant.datamodules.digits", "make_digit_mosaics", "csv", "data/digit_mosaics"),
    "digit_drawings": (
        "sketchquant.datamodules.digit_drawings",
        "make_digit_drawings",
        "folder",
        "data/digit_drawings",
    ),
    "emoji_drawings": (
        "sketchquant.datamodules.emoji_drawings",
        "make_emoji_drawings",
        "folder",
        "data/emoji_drawings",
    ),
}


def generator(kind: str) -> tuple[Callable, str]:
    """``(function, layout)`` of a generated dataset kind; ``ValueError`` naming the kinds otherwise."""
    if kind not in GENERATORS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {sorted(GENERATORS)}")
    module, name, layout, _ = GENERATORS[kind]
    return getattr(importlib.import_module(module), name), layout


def default_out(kind: str) -> str:
    return GENERATORS[kind][3]
