"""What a gallery stores and how: settings from the checkpoint, PQ prototypes, indexes, the manifest."""

from __future__ import annotations

import hashlib
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sketchquant.app.gallery.records import (
    BAD_IMAGE_POLICIES,
    FORMAT_VERSION,
    MANIFEST,
    BadGalleryImageWarning,
    GalleryError,
    sha256_file,
)
from sketchquant.core.io import atomic_path

# --------------------------------------------------------------------------------------------------
# model + transform


def _transform(cfg: Any):
    from sketchquant.app.build import datamodule_kwargs
    from sketchquant.datamodules.transforms import build_eval_transform

    kw = datamodule_kwargs(cfg)
    size = kw["image_size"]
    hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    tf = build_eval_transform(size, kw["mean"], kw["std"], kw.get("interpolation") or "bilinear")
    return tf, hw


def _is_codes(cfg: Any) -> bool:
    from sketchquant.app.methods import method_of

    return bool(method_of(cfg).codes)


def _settings(cfg: Any) -> dict[str, Any]:
    """What a gallery of ``cfg``'s method stores and how it ranks (from the ``eval`` section)."""
    if _is_codes(cfg):
        return {"features": ["codes"], "default": "codes", "query": "image"}
    ev = cfg.eval
    proto = bool(ev.get("prototypes", True))
    return {
        "features": ["raw", "proto", "fused"] if proto else ["raw"],
        "default": "fused" if proto else "raw",
        "query": "sketch",
        "pq_m": int(ev.pq_m),
        "pq_k": int(ev.pq_k),
        "pq_seed": 0,
        "pq_max_points_per_centroid": ev.get("pq_max_points_per_centroid"),
        "fusion": str(ev.fusion),
        "fusion_lambda": float(ev.fusion_lambda),
    }


def _normalise(f: np.ndarray) -> np.ndarray:
    import torch.nn.functional as F

    return F.normalize(torch.from_numpy(np.ascontiguousarray(f, dtype=np.float32)), dim=1).numpy()


# --------------------------------------------------------------------------------------------------
# build


def _check_policy(on_bad_image: str) -> None:
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise GalleryError(
            f"--on-bad-image must be one of {', '.join(BAD_IMAGE_POLICIES)}, got {on_bad_image!r}"
        )


def _report_bad(bad: list[str], total: int, policy: str) -> None:
    if not bad:
        return
    msg = f"{len(bad)} of {total} image files are unreadable: " + "; ".join(bad)
    if policy == "error":
        raise GalleryError(msg + " (--on-bad-image error; use skip to leave them out)")
    warnings.warn(msg + " - skipped", BadGalleryImageWarning, stacklevel=3)
    print(f"warning: skipped {len(bad)} unreadable image file(s): {', '.join(bad)}", file=sys.stderr)


def _index_variants(settings: dict, stored: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays each index holds: ``codes``, or ``raw`` / ``proto`` / ``fused`` (feature fusion)."""
    if "codes" in stored:
        return {"codes": stored["codes"]}
    out = {"raw": stored["raw"]}
    if "proto" in settings["features"]:
        from sketchquant.core.retrieval.prototypes import fuse_features

        proto = _prototypes(stored)
        out["proto"] = proto
        if settings["fusion"] == "feature":
            out["fused"] = fuse_features(stored["raw"], proto, settings["fusion_lambda"])
    return out


def _fit_pq(settings: dict, raw: np.ndarray) -> tuple[np.ndarray, int]:
    """The codebook (``pq.centroids``) and K actually used (capped at the gallery size, power of 2)."""
    from sketchquant.core.retrieval.prototypes import fit_product_quantizer

    k = int(settings["pq_k"])
    n = raw.shape[0]
    if k > n:
        k_new = 1 << (max(n, 2).bit_length() - 1)
        print(f"warning: pq_k={k} is more than the {n} gallery photos; using pq_k={k_new}", file=sys.stderr)
        k = k_new
    pq = fit_product_quantizer(
        raw,
        m=int(settings["pq_m"]),
        k=k,
        seed=int(settings["pq_seed"]),
        max_points_per_centroid=settings.get("pq_max_points_per_centroid"),
    )
    import faiss

    return faiss.vector_to_array(pq.centroids).astype(np.float32), k


def _pq_from(stored: dict[str, np.ndarray]):
    import faiss

    d = stored["raw"].shape[1]
    m, k = int(stored["pq_m"]), int(stored["pq_k"])
    pq = faiss.ProductQuantizer(d, m, int(k).bit_length() - 1)
    faiss.copy_array_to_vector(np.ascontiguousarray(stored["pq_centroids"], dtype=np.float32), pq.centroids)
    return pq


def _prototypes(stored: dict[str, np.ndarray]) -> np.ndarray:
    from sketchquant.core.retrieval.prototypes import prototype_features

    return prototype_features(_pq_from(stored), stored["raw"])


def _write_index(index: Any, path: Path) -> None:
    import faiss

    with atomic_path(path, suffix=".faiss") as tmp:
        faiss.write_index(index, str(tmp))


def _dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _read_manifest(gallery: Path) -> dict:
    import json

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


def _checkpoint_record(ckpt: Path) -> dict[str, Any]:
    st = ckpt.stat()
    return {
        "path": str(ckpt.resolve()),
        "sha256": sha256_file(ckpt),
        "size": int(st.st_size),
        "mtime_ns": int(st.st_mtime_ns),
    }


BUILD_ENV = "SKETCHQUANT_GALLERY_BUILD"
#: the trainer settings extraction uses (``trainer=NAME`` takes these from ``configs/trainer/NAME.yaml``)
EXTRACTION_KEYS = ("accelerator", "devices", "num_nodes", "strategy", "precision")


def expand_trainer_choice(overrides: Sequence[str]) -> list[str]:
    """``trainer=NAME`` (a group choice, e.g. ``trainer=ddp``) as the ``trainer.KEY=VALUE`` overrides of
    its extraction settings: a checkpoint's config takes single keys only."""
    from omegaconf import OmegaConf

    from sketchquant.core.config import config_file, list_choices

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


def _build_stamp(old: dict | None) -> str:
    """The name of this build's data folder, the same in every process of a multi-process build: the
    first process sets it in the environment (Lightning's re-launched DDP workers inherit it); under
    torchrun / SLURM every process derives it from the job id (and the gallery's current data folder)."""
    from sketchquant.app.rundir import _job_id

    if os.environ.get(BUILD_ENV):
        return os.environ[BUILD_ENV]
    job = _job_id()
    if job:
        prev = hashlib.sha1(str((old or {}).get("data_dir")).encode()).hexdigest()[:8]
        return f"job{job}-{prev}"
    return time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}-{int(time.time_ns() % 10**6):06d}"
