"""What a gallery stores and how: settings from the checkpoint's method and ``eval`` section, PQ
prototypes, FAISS indexes, the manifest. The public functions here are what :mod:`.build` and
:mod:`.search` share."""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from sketchquant.app.gallery.records import (
    BAD_IMAGE_POLICIES,
    FORMAT_VERSION,
    MANIFEST,
    BadGalleryImageWarning,
    GalleryError,
    sha256_file,
)
from sketchquant.app.methods import method_of
from sketchquant.core.config import as_kwargs, config_file, list_choices
from sketchquant.core.io import atomic_path
from sketchquant.core.retrieval.prototypes import (
    FUSED,
    PROTO,
    fit_product_quantizer,
    fitted_k,
    fuse_features,
    prototype_features,
)
from sketchquant.datamodules.transforms import build_eval_transform, image_settings

# --------------------------------------------------------------------------------------------------
# model + transform


def eval_transform(cfg: Any) -> tuple[Any, tuple[int, int]]:
    """``(transform, (H, W))``: the evaluation transform of ``cfg``'s data section (no augmentation)."""
    kw = image_settings(as_kwargs(cfg.data, drop=("kind",)), cfg.model.backbone)
    size = kw["image_size"]
    hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    tf = build_eval_transform(size, kw["mean"], kw["std"], kw.get("interpolation") or "bilinear")
    return tf, hw


def gallery_settings(cfg: Any) -> dict[str, Any]:
    """What a gallery of ``cfg``'s method stores and how it ranks: the method's gallery features (the PQ
    variants only with ``eval.prototypes``), its query domain, and the PQ and fusion settings."""
    method = method_of(cfg)
    names = method.features
    ev = cfg.eval
    features = list(names.stored(bool(ev.prototypes)))
    settings: dict[str, Any] = {
        "features": features,
        "default": names.gallery_default if names.gallery_default in features else features[0],
        "query": method.query_domain,
        "codes": features[0] in names.codes,
    }
    if len(features) > 1:  # PQ prototypes of the base features
        settings.update(
            pq_m=int(ev.pq_m),
            pq_k=int(ev.pq_k),
            pq_min_points=int(ev.get("pq_min_points", 0)),
            pq_seed=0,
            pq_max_points_per_centroid=ev.get("pq_max_points_per_centroid"),
            fusion=str(ev.fusion),
            fusion_lambda=float(ev.fusion_lambda),
        )
    return settings


def base_feature(settings: dict[str, Any]) -> str:
    """The stored features every other kind derives from (``raw``, or method A's ``codes``)."""
    return settings["features"][0]


def is_codes(settings: dict[str, Any]) -> bool:
    """Integer codes (stored as uint8), not float features (format-1 galleries: query domain ``image``)."""
    return bool(settings.get("codes", settings.get("query") == "image"))


def normalise(f: np.ndarray) -> np.ndarray:
    """Rows L2-normalised (float32), as the evaluation normalises them."""
    return F.normalize(torch.from_numpy(np.ascontiguousarray(f, dtype=np.float32)), dim=1).numpy()


# --------------------------------------------------------------------------------------------------
# build


def check_policy(on_bad_image: str) -> None:
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise GalleryError(
            f"--on-bad-image must be one of {', '.join(BAD_IMAGE_POLICIES)}, got {on_bad_image!r}"
        )


def report_bad(bad: list[str], total: int, policy: str) -> None:
    if not bad:
        return
    msg = f"{len(bad)} of {total} image files are unreadable: " + "; ".join(bad)
    if policy == "error":
        raise GalleryError(msg + " (--on-bad-image error; use skip to leave them out)")
    warnings.warn(msg + " - skipped", BadGalleryImageWarning, stacklevel=3)
    print(f"warning: skipped {len(bad)} unreadable image file(s): {', '.join(bad)}", file=sys.stderr)


def index_variants(settings: dict, stored: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays each index holds: the base features (``raw`` or ``codes``) and, with prototypes, ``proto``
    and (feature fusion) ``fused``; distance fusion is computed at query time."""
    base = base_feature(settings)
    out = {base: stored[base]}
    if PROTO in settings["features"]:
        proto = prototypes(stored, base)
        out[PROTO] = proto
        if settings["fusion"] == "feature":
            out[FUSED] = fuse_features(stored[base], proto, settings["fusion_lambda"])
    return out


def fit_pq(settings: dict, raw: np.ndarray) -> tuple[np.ndarray, int]:
    """The codebook (``pq.centroids``) and K actually used (capped at the gallery size, power of 2)."""
    k = int(settings["pq_k"])
    n = raw.shape[0]
    k = fitted_k(n, k, int(settings.get("pq_min_points", 0)))  # a gallery built before it existed: 0
    pq = fit_product_quantizer(
        raw,
        m=int(settings["pq_m"]),
        k=k,
        seed=int(settings["pq_seed"]),
        max_points_per_centroid=settings.get("pq_max_points_per_centroid"),
    )
    return faiss.vector_to_array(pq.centroids).astype(np.float32), k


def pq_from(stored: dict[str, np.ndarray], base: str) -> faiss.ProductQuantizer:
    """The product quantiser stored with the features (``pq_centroids``, ``pq_m``, ``pq_k``)."""
    d = stored[base].shape[1]
    m, k = int(stored["pq_m"]), int(stored["pq_k"])
    pq = faiss.ProductQuantizer(d, m, int(k).bit_length() - 1)
    faiss.copy_array_to_vector(np.ascontiguousarray(stored["pq_centroids"], dtype=np.float32), pq.centroids)
    return pq


def prototypes(stored: dict[str, np.ndarray], base: str) -> np.ndarray:
    """The prototype features of the stored base features."""
    return prototype_features(pq_from(stored, base), stored[base])


def write_index(index: Any, path: Path) -> None:
    with atomic_path(path, suffix=".faiss") as tmp:
        faiss.write_index(index, str(tmp))


def dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def read_manifest(gallery: Path) -> dict:
    """The manifest of gallery folder ``gallery``, checked for its format version."""
    path = gallery / MANIFEST
    if not path.is_file():
        side = Path(str(gallery) + ".json")
        if gallery.is_file() and side.is_file():
            raise GalleryError(
                f"{gallery} is a method-A code index from an older sketchquant (format 0: an index file "
                f"and a .json sidecar, no manifest); search it with `sketchquant search --index {gallery} "
                f"--ckpt CKPT`, or build a gallery with `sketchquant index --ckpt CKPT --images DIR --out NEW`"
            )
        raise FileNotFoundError(f"{gallery} is not a gallery (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise GalleryError(f"gallery manifest {path} is unreadable: {err}") from err
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if not isinstance(version, int) or version < FORMAT_VERSION:
        raise GalleryError(
            f"gallery {gallery} was written by an older sketchquant (format version {version}; this one "
            f"reads {FORMAT_VERSION}): rebuild it with `sketchquant index --ckpt CKPT --images DIR --out "
            f"{gallery}`"
        )
    if version > FORMAT_VERSION:
        raise GalleryError(
            f"gallery {gallery} has format version {version}, newer than this sketchquant reads "
            f"({FORMAT_VERSION}): upgrade sketchquant"
        )
    return manifest


def checkpoint_record(ckpt: Path) -> dict[str, Any]:
    st = ckpt.stat()
    return {
        "path": str(ckpt.resolve()),
        "sha256": sha256_file(ckpt),
        "size": int(st.st_size),
        "mtime_ns": int(st.st_mtime_ns),
    }


#: the trainer settings extraction uses (``trainer=NAME`` takes these from ``configs/trainer/NAME.yaml``)
EXTRACTION_KEYS = ("accelerator", "devices", "num_nodes", "strategy", "precision")


def expand_trainer_choice(overrides: Sequence[str]) -> list[str]:
    """``trainer=NAME`` (a group choice, e.g. ``trainer=ddp``) as the ``trainer.KEY=VALUE`` overrides of
    its extraction settings: a checkpoint's config takes single keys only."""
    out: list[str] = []
    for item in overrides:
        key, _, value = str(item).partition("=")
        if key.strip() != "trainer" or not value:
            out.append(str(item))
            continue
        path = config_file("trainer", value.strip())
        if path is None:
            raise GalleryError(
                f"trainer={value}: no such choice (choices: {', '.join(list_choices('trainer'))})"
            )
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}
        out += [f"trainer.{k}={v}" for k, v in data.items() if k in EXTRACTION_KEYS]
    return out
