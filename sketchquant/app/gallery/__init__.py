"""Galleries: index a photo collection with a trained checkpoint of either method, search it with
sketches (method B) or images (method A) — docs/method.md §B (S4–S6) and §F.

    gallery = Gallery.build("runs/.../last.ckpt", "photos/", "my-gallery")
    hits = Gallery.open("my-gallery").search(["sketch.png"], k=10)[0].hits

A gallery is a folder::

    GALLERY/manifest.json        format version, method, checkpoint path + sha256, resolved config,
                                 image root, items (relative path, size, mtime, label), index files
    GALLERY/data-<stamp>/        features.npz + the FAISS index(es) the manifest names (and the
                                 previous generation's folder, kept for readers still opening it)
    GALLERY/build.lock           held (flock) by the build under way; names its pid, host, start

Reading order: :mod:`.records` (results, the photo collection), :mod:`.store` (what is stored and how:
settings from the checkpoint, prototypes, indexes, manifest), :mod:`.extract` (``Trainer.predict`` in
shards), :mod:`.lock` (one build at a time), :mod:`.build` (atomic build and ``--update``),
:mod:`.search` (:class:`Gallery`), :mod:`.live` (a server's gallery that follows rebuilds).

**Atomic**: a build writes a fresh ``data-<stamp>/`` folder (each file through
:mod:`sketchquant.core.io`), then replaces ``manifest.json`` atomically, then deletes the data folders
older than the one it replaced (that one stays: a server may still be opening it). A build killed at
any point leaves the previous manifest and the data it names: the previous gallery still opens. Two
builds into one folder: the second fails at once, naming the first (``GALLERY/build.lock``).

**Same ranking as evaluation** (docs/method.md §C): method B stores the L2-normalised raw features ``x``; the
PQ prototypes ``x̂`` are fitted exactly as the evaluator fits them; ``fused`` is ``(1 − λ)x̂ + λx``
(feature fusion) or, with ``eval.fusion=distance``, the evaluator's own distance-fusion function. Ties
go to the lower gallery position. Method A stores uint8 codes in ``IndexScalarQuantizer(QT_8bit_direct)``.

**--update**: unchanged files keep their stored features; new or changed files are encoded; deleted
files are dropped; the PQ codebook is re-fitted on all features, so an update equals a full rebuild.
"""

from sketchquant.core.lazy import lazy_exports

_EXPORTS = {
    "FORMAT_VERSION": ".records",
    "IMAGE_EXTENSIONS": ".records",
    "BadGalleryImageWarning": ".records",
    "BuildReport": ".records",
    "GalleryError": ".records",
    "Hit": ".records",
    "QueryResult": ".records",
    "list_images": ".records",
    "sha256_file": ".records",
    "Gallery": ".search",
    "GalleryBusyError": ".lock",
    "GalleryGoneError": ".live",
    "LiveGallery": ".live",
    "contact_sheet": ".search",
    "search_gallery": ".search",
    "build_gallery": ".build",  # needs Lightning's Trainer (searching does not)
    "expand_trainer_choice": ".store",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
