"""The embedded benchmarks: procedurally drawn "glyph" classes as photos and as sketches.

Every class is a seeded composition of 2-4 primitives (ellipse, polygon, arc, stroke, star) with its own
positions, scales and rotations, so the unseen classes are new compositions of familiar parts: the
zero-shot question in miniature. Two domains are drawn from the same class geometry:

- photo: filled, coloured, textured parts on a cluttered background (gradient, low-frequency noise,
  distractor shapes made of the same primitives), random affine, occluders, pixel noise;
- sketch: black wobbly outlines on white, parts dropped or cut short, extra strokes, varied line width.

Every image has its own RNG seeded from ``(seed, class, domain, i)``, so the output is byte-identical for a
seed and generation can be split over processes. Output is written to ``<out>.tmp-XXXX`` and renamed into
place when complete, with a ``dataset.json`` manifest. Only PIL and numpy are used.

Modules: :mod:`.shapes` (class geometry), :mod:`.render` (drawing), :mod:`.output` (atomic folders,
manifests, and the CSV / sketch-photo folder steps every generator here and beside ``glyphs/`` shares), the
generators :mod:`.sketch_photo` (:func:`make_glyph_benchmark`, method B), :mod:`.scenes`
(:func:`make_glyph_scenes`) and :mod:`.mosaics` (:func:`make_glyph_mosaics`, both method A), :mod:`.sheet`
(:func:`make_contact_sheet`).
"""

from __future__ import annotations

from .mosaics import make_glyph_mosaics
from .output import GENERATOR_VERSION, KIND_VERSIONS, MANIFEST
from .scenes import make_glyph_scenes
from .shapes import class_name, class_spec
from .sheet import make_contact_sheet
from .sketch_photo import make_glyph_benchmark, unseen_class_ids

__all__ = [
    "GENERATOR_VERSION",
    "KIND_VERSIONS",
    "MANIFEST",
    "class_name",
    "class_spec",
    "make_contact_sheet",
    "make_glyph_benchmark",
    "make_glyph_mosaics",
    "make_glyph_scenes",
    "unseen_class_ids",
]
