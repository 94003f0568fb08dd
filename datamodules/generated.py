"""The registry of generated datasets: kind → (generator function, its settings class, the layout it writes).

Used by ``sketchquant data make --kind`` (:mod:`sketchquant.datamodules.cli_data`) and by a DataModule's
``auto_generate`` (``data.generator.kind``). Generators are imported only when asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

#: kind → (module, function, its settings dataclass in that module, layout it writes, default output folder)
GENERATORS: dict[str, tuple[str, str, str, str, str]] = {
    "sketch_photo": (
        "sketchquant.datamodules.glyphs.sketch_photo",
        "make_glyph_benchmark",
        "GlyphBenchmarkSettings",
        "folder",
        "data/glyphs",
    ),
    "scenes": (
        "sketchquant.datamodules.glyphs.scenes",
        "make_glyph_scenes",
        "SceneSettings",
        "csv",
        "data/glyph_scenes",
    ),
    "mosaics": (
        "sketchquant.datamodules.glyphs.mosaics",
        "make_glyph_mosaics",
        "GlyphMosaicSettings",
        "csv",
        "data/glyph_mosaics",
    ),
    "digits": (
        "sketchquant.datamodules.digits",
        "make_digit_mosaics",
        "MosaicSettings",
        "csv",
        "data/digit_mosaics",
    ),
    "digit_drawings": (
        "sketchquant.datamodules.digit_drawings",
        "make_digit_drawings",
        "DigitDrawingSettings",
        "folder",
        "data/digit_drawings",
    ),
    "emoji_drawings": (
        "sketchquant.datamodules.emoji_drawings",
        "make_emoji_drawings",
        "EmojiDrawingSettings",
        "folder",
        "data/emoji_drawings",
    ),
}


def _entry(kind: str) -> tuple[str, str, str, str, str]:
    if kind not in GENERATORS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {sorted(GENERATORS)}")
    return GENERATORS[kind]


def generator(kind: str) -> tuple[Callable, str]:
    """``(function, layout)`` of a generated dataset kind; ``ValueError`` naming the kinds otherwise."""
    module, name, _, layout, _ = _entry(kind)
    return getattr(importlib.import_module(module), name), layout


def settings_class(kind: str) -> type:
    """The settings dataclass of a kind's generator (its fields: the keywords it takes)."""
    module, _, name, _, _ = _entry(kind)
    return getattr(importlib.import_module(module), name)


def default_out(kind: str) -> str:
    return GENERATORS[kind][4]
