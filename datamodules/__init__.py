"""LightningDataModules (one :class:`RetrievalDataModule` base, two layouts), their config dataclasses,
readers, transforms, the embedded data generators and the shipped split lists.

Imports only :mod:`sketchquant.core` (never the modules, callbacks or the app).

Imports are lazy so the generator and transforms work without importing Lightning.
"""

from __future__ import annotations

# one name only (two copies of a class break isinstance and registries)
if __name__ != "sketchquant.datamodules":
    raise ImportError(f"import this folder as sketchquant.datamodules, not as {__name__}")

from sketchquant.core.lazy import lazy_exports

_EXPORTS = {
    "RetrievalDataModule": "base",
    "RetrievalDataConfig": "config",
    "SketchPhotoDataModule": "sketch_photo",
    "SketchPhotoDataConfig": "config",
    "ImageDataModule": "images",
    "ImageDataConfig": "config",
    "MixedDomainSampler": "common",
    "SampleDataset": "common",
    "read_class_list": "lists",
    "read_shipped_split": "lists",
    "make_glyph_benchmark": "glyphs",
    "make_glyph_scenes": "glyphs",
    "make_glyph_mosaics": "glyphs",
    "make_contact_sheet": "glyphs",
    "build_train_transform": "transforms",
    "build_eval_transform": "transforms",
    "resolve_data_config": "transforms",
    "data_make": "cli_data",
    "data_preview": "cli_data",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, {name: f".{mod}" for name, mod in _EXPORTS.items()})
