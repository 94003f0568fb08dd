"""Galleries: index a photo collection with a trained checkpoint of either method, search it with
sketches (method B) or images (method A) — SPEC §B S4–S6 and §F.

    gallery = Gallery.build("runs/.../last.ckpt", "photos/", "my-gallery")
    hits = Gallery.open("my-gallery").search(["sketch.png"], k=10)[0].hits

A gallery is a folder::

    GALLERY/manifest.json        format version, method, checkpoint path + sha256, resolved config,
                                 image root, items (relative path, size, mtime, label), index files
    GALLERY/data-<stamp>/        features.npz + the FAISS index(es) the manifest names

**Atomic**: a build writes a fresh ``data-<stamp>/`` folder (each file through
:mod:`sketchquant.core.io`), then replaces ``manifest.json`` atomically, then deletes the older data
folders. A build killed at any point leaves the previous manifest and the data it names: the previous
gallery still opens.

**Same ranking as evaluation** (SPEC §C): method B stores the L2-normalised raw features ``x``; the
PQ prototypes ``x̂`` are fitted with :func:`~sketchquant.core.retrieval.prototypes.fit_product_quantizer`
on the gallery features with the checkpoint's ``eval.pq_m`` / ``eval.pq_k`` /
``eval.pq_max_points_per_centroid`` (seed 0), exactly as the evaluator fits them; ``fused`` is
``(1 − λ)x̂ + λx`` (feature fusion) or, with ``eval.fusion=distance``, the evaluator's own
distance-fusion function over the whole gallery. Ties go to the lower gallery
position (the order of the list file, or sorted paths for a folder). Method A stores uint8 codes in
``IndexScalarQuantizer(QT_8bit_direct)`` (exact squared L2 between codes).

**--update**: files whose relative path, size and mtime are unchanged keep their stored features; new
or changed files are encoded; deleted files are dropped. The PQ codebook is then re-fitted on all
features (k-means costs little next to the network), so an update gives the same gallery as a full
rebuild; the prototypes of unchanged photos can therefore move a little.

**Extraction** runs through ``Trainer.predict`` with the checkpoint's trainer settings (``trainer.*``
overrides: ``trainer.strategy=ddp trainer.devices=N``, or a group choice ``trainer=ddp``); every process writes its shard, the shards are
merged by file position (the padding a ``DistributedSampler`` adds is dropped), so a sharded build
equals a single-process one. Searching needs no Trainer: the network is loaded from the checkpoint.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter

from sketchquant.core.io import atomic_path, atomic_savez, atomic_write_json

__all__ = [
    "FORMAT_VERSION",
    "IMAGE_EXTENSIONS",
    "Gallery",
    "GalleryError",
    "Hit",
    "QueryResult",
    "BuildReport",
    "build_gallery",
    "search_gallery",
    "list_images",
    "sha256_file",
]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
BAD_IMAGE_POLICIES = ("skip", "error")


class GalleryError(ValueError):
    """A gallery that cannot be built, opened or searched as asked; the message says why."""


class BadGalleryImageWarning(UserWarning):
    """Unreadable files left out of a gallery."""


@dataclass
class Hit:
    """One search result. ``distance`` is the index's score: squared L2 for the indexes (raw, proto,
    fused features, uint8 codes), the evaluator's fused distance with ``fusion=distance``."""

    rank: int
    index: int
    path: str
    relpath: str
    distance: float
    label: str | None = None


@dataclass
class QueryResult:
    query: str
    features: str
    hits: list[Hit] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BuildReport:
    path: str
    images: int
    encoded: int
    reused: int
    skipped: list[str]
    seconds: float
    features: list[str]
    index_type: str
    bytes_on_disk: int


# --------------------------------------------------------------------------------------------------
# small helpers


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("sketchquant")
    except Exception:  # pragma: no cover
        return "unknown"


def _rgb(image: Any):
    """A PIL image as RGB; transparent pixels become white (as :func:`datamodules.transforms.load_rgb`)."""
    from PIL import Image

    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
        canvas.alpha_composite(image)
        return canvas.convert("RGB")
    return image.convert("RGB")


# --------------------------------------------------------------------------------------------------
# the image collection


@dataclass
class Collection:
    """The files of a gallery: absolute paths, paths relative to ``root``, labels (or None), size, mtime."""

    root: Path
    paths: list[str]
    relpaths: list[str]
    labels: list[str | None]
    sizes: list[int]
    mtimes: list[int]


def _stat_items(paths: list[Path]) -> tuple[list[int], list[int]]:
    sizes, mtimes = [], []
    for p in paths:
        try:
            st = p.stat()
            sizes.append(int(st.st_size))
            mtimes.append(int(st.st_mtime_ns))
        except OSError:
            sizes.append(-1)
            mtimes.append(-1)
    return sizes, mtimes


def _rel(p: Path, root: Path) -> str:
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


def list_images(images: str | os.PathLike) -> Collection:
    """A folder (walked recursively for jpg, jpeg, png, webp, bmp; sorted paths; the label is the first
    sub-folder when the image sits in one) or a list file (one path per line, or CSV ``path,labels``;
    relative paths are relative to the list file; its order is kept)."""
    src = Path(images).expanduser()
    if src.is_dir():
        root = src.resolve()
        found = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not found:
            raise GalleryError(f"no images ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) under {src}")
        rel = [p.relative_to(root).as_posix() for p in found]
        labels = [r.split("/", 1)[0] if "/" in r else None for r in rel]
        if not any(labels):
            labels = [None] * len(rel)
        sizes, mtimes = _stat_items(found)
        return Collection(root, [str(p) for p in found], rel, labels, sizes, mtimes)
    if not src.is_file():
        raise FileNotFoundError(f"images {src} is neither a folder nor a list file")
    root = src.resolve().parent
    paths: list[Path] = []
    labels: list[str | None] = []
    for n, line in enumerate(src.read_text(encoding="utf-8").splitlines()):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path, _, label = line.partition(",") if "," in line else (line, "", "")
        if n == 0 and path.strip().lower() == "path":
            continue  # a CSV header
        p = Path(path.strip()).expanduser()
        paths.append(p if p.is_absolute() else root / p)
        labels.append(label.strip() or None)
    if not paths:
        raise GalleryError(f"list file {src} names no images")
    sizes, mtimes = _stat_items(paths)
    return Collection(root, [str(p) for p in paths], [_rel(p, root) for p in paths], labels, sizes, mtimes)


# --------------------------------------------------------------------------------------------------
# extraction through Trainer.predict


class _Files(torch.utils.data.Dataset):
    """``{"image", "ok", "pos"}``; an unreadable file gives a zero image and ``ok=False``."""

    def __init__(self, paths: Sequence[str], transform: Any, shape: tuple[int, int, int]) -> None:
        self.paths, self.transform, self.shape = list(paths), transform, shape

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, pos: int) -> dict:
        from datamodules.transforms import load_rgb

        try:
            image, ok = self.transform(load_rgb(self.paths[pos])), True
        except Exception:  # noqa: BLE001 - any unreadable file is reported by name after extraction
            image, ok = torch.zeros(self.shape), False
        return {"image": image, "ok": ok, "pos": pos}


class _Extractor(pl.LightningModule):
    """A trained network whose ``predict_step`` returns its features with the file positions
    (module-level, so ``ddp_spawn`` can pickle it)."""

    def __init__(self, net: Any) -> None:
        super().__init__()
        self.net = net

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        feats = self.net(batch["image"])
        return {"feats": feats.detach().cpu(), "ok": batch["ok"].cpu(), "pos": batch["pos"].cpu()}


class _ShardWriter(BasePredictionWriter):
    """Each process writes its predictions to ``folder/shard-<rank>.npz`` (atomically), then waits for
    the others."""

    def __init__(self, folder: Path) -> None:
        super().__init__(write_interval="batch")
        self.folder = Path(folder)
        self.parts: dict[str, list] = {"feats": [], "ok": [], "pos": []}

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dl=0):
        for key in self.parts:
            self.parts[key].append(prediction[key].numpy())

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        arrays = {k: np.concatenate(v) if v else np.zeros(0) for k, v in self.parts.items()}
        atomic_savez(self.folder / f"shard-{trainer.global_rank}.npz", arrays)
        self.parts = {k: [] for k in self.parts}
        trainer.strategy.barrier("gallery-shards")


def _extract(
    cfg: Any, module: Any, paths: list[str], folder: Path, *, batch_size: int, workers: int
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Features of ``paths`` in their order and the ``ok`` mask; the third value is False on the
    processes (ranks > 0) that only helped."""
    from pytorch_lightning.callbacks import RichProgressBar

    tf, size = _transform(cfg)
    ds = _Files(paths, tf, (3, *size))
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=torch.cuda.is_available()
    )
    folder.mkdir(parents=True, exist_ok=True)
    tr = cfg.trainer
    progress = sys.stdout.isatty()
    trainer = pl.Trainer(
        accelerator=tr.get("accelerator", "auto"),
        devices=tr.get("devices", "auto"),
        strategy=tr.get("strategy", "auto"),
        num_nodes=tr.get("num_nodes", 1),
        precision=tr.get("precision", "32-true"),
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        callbacks=[_ShardWriter(folder), *([RichProgressBar()] if progress else [])],
        default_root_dir=str(folder),
    )
    trainer.predict(_Extractor(module), dataloaders=loader, return_predictions=False)
    if trainer.global_rank != 0:
        return np.zeros(0), np.zeros(0, bool), False
    world = trainer.world_size
    shards = [folder / f"shard-{r}.npz" for r in range(world)]
    missing = [s.name for s in shards if not s.is_file()]
    if missing:
        raise GalleryError(f"extraction left no shard(s) {', '.join(missing)} in {folder}")
    parts = [dict(np.load(s)) for s in shards]
    pos = np.concatenate([p["pos"] for p in parts]).astype(np.int64)
    feats = np.concatenate([p["feats"] for p in parts])
    ok = np.concatenate([p["ok"] for p in parts]).astype(bool)
    order = np.argsort(pos, kind="stable")
    pos, feats, ok = pos[order], feats[order], ok[order]
    keep = np.ones(len(pos), bool)
    keep[1:] = pos[1:] != pos[:-1]  # DistributedSampler padding repeats samples
    pos, feats, ok = pos[keep], feats[keep], ok[keep]
    if not np.array_equal(pos, np.arange(len(paths))):
        raise GalleryError(f"the shards hold {len(pos)} of {len(paths)} images")
    for s in shards:
        s.unlink(missing_ok=True)
    return feats, ok, True


# --------------------------------------------------------------------------------------------------
# model + transform


def _transform(cfg: Any):
    from datamodules.transforms import build_eval_transform
    from sketchquant.app.build import datamodule_kwargs

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

    from sketchquant.core.config import config_dir, list_choices

    out: list[str] = []
    for item in overrides:
        key, _, value = str(item).partition("=")
        if key.strip() != "trainer" or not value:
            out.append(str(item))
            continue
        path = config_dir() / "trainer" / f"{value.strip()}.yaml"
        if not path.is_file():
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


def build_gallery(
    ckpt: str | os.PathLike,
    images: str | os.PathLike,
    out: str | os.PathLike,
    *,
    update: bool = False,
    index_type: str | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    on_bad_image: str = "skip",
    pq_m: int | None = None,
    pq_k: int | None = None,
    overrides: Sequence[str] = (),
    quiet: bool = False,
) -> BuildReport | None:
    """Index ``images`` (a folder or a list file) with checkpoint ``ckpt`` into the gallery folder ``out``.

    ``overrides`` (``key=value``) go on top of the checkpoint's config (``eval.fusion=distance``,
    ``trainer.devices=2`` ...). Returns a :class:`BuildReport` (``None`` on helper processes of a
    multi-process build)."""
    from sketchquant.app.checkpoints import load_trained_module
    from sketchquant.core.config import to_container
    from sketchquant.core.retrieval.factory import index_bytes, make_index

    t0 = time.perf_counter()
    _check_policy(on_bad_image)
    out = Path(out)
    ckpt = Path(ckpt)
    old = None
    if update:
        if not (out / MANIFEST).is_file():
            raise GalleryError(f"--update: {out} is not a gallery yet (build it without --update first)")
        old = _read_manifest(out)
    elif out.exists() and not out.is_dir():
        raise GalleryError(f"--out {out} exists and is not a folder")
    coll = list_images(images)
    overrides = expand_trainer_choice(overrides)
    if pq_m is not None:
        overrides.append(f"eval.pq_m={int(pq_m)}")
    if pq_k is not None:
        overrides.append(f"eval.pq_k={int(pq_k)}")
    cfg, module, _ = load_trained_module(ckpt, overrides)
    settings = _settings(cfg)
    record = _checkpoint_record(ckpt)
    if old is not None:
        if old["checkpoint"]["sha256"] != record["sha256"]:
            raise GalleryError(
                f"--update: gallery {out} was built with checkpoint {old['checkpoint']['path']} (sha256 "
                f"{old['checkpoint']['sha256'][:12]}…), not {ckpt}: rebuild it without --update"
            )
        settings = old["settings"]
        index_type = index_type or old["index_type"]
    index_type = index_type or "flat"

    # which files need the network
    n = len(coll.paths)
    reuse: dict[int, int] = {}  # new position -> old position
    old_stored: dict[str, np.ndarray] = {}
    if old is not None:
        items = old["items"]
        key_old = {
            (p, s, m): i
            for i, (p, s, m) in enumerate(zip(items["relpaths"], items["sizes"], items["mtimes_ns"]))
        }
        for i, key in enumerate(zip(coll.relpaths, coll.sizes, coll.mtimes)):
            if key in key_old:
                reuse[i] = key_old[key]
        with np.load(out / old["data_dir"] / "features.npz") as z:
            old_stored = {k: z[k] for k in z.files}
    todo = [i for i in range(n) if i not in reuse]

    data_dir = f"data-{_build_stamp(old)}"
    work = out / data_dir
    feats = ok = None
    try:
        if todo:
            bs = int(batch_size or cfg.data.get("batch_size", 64) or 64)
            nw = int(workers if workers is not None else (cfg.data.get("num_workers", 0) or 0))
            module.eval()
            from sketchquant.app.rundir import restore_env

            outer = os.environ.get(BUILD_ENV)
            os.environ[BUILD_ENV] = data_dir[len("data-") :]
            try:
                feats, ok, main = _extract(
                    cfg, module, [coll.paths[i] for i in todo], work / "shards", batch_size=bs, workers=nw
                )
            finally:
                restore_env(BUILD_ENV, outer)
            if not main:
                return None
        else:
            work.mkdir(parents=True, exist_ok=True)
        key = "codes" if settings["query"] == "image" else "raw"
        dim = int(old_stored[key].shape[1]) if old_stored else int(feats.shape[1])
        rows = np.zeros((n, dim), np.uint8 if key == "codes" else np.float32)
        good = np.ones(n, bool)
        for i, j in reuse.items():
            rows[i] = old_stored[key][j]
        if todo:
            new = feats.astype(np.uint8) if key == "codes" else _normalise(feats)
            rows[todo] = new
            good[todo] = ok
        bad = [coll.paths[i] for i in range(n) if not good[i]]
        _report_bad(bad, n, on_bad_image)
        keep = np.flatnonzero(good)
        if len(keep) == 0:
            raise GalleryError(f"none of the {n} images under {images} could be read")
        stored: dict[str, np.ndarray] = {key: np.ascontiguousarray(rows[keep])}
        if key == "raw" and "proto" in settings["features"]:
            centroids, k_used = _fit_pq(settings, stored["raw"])
            settings = {**settings, "pq_k_used": k_used}
            stored.update(pq_centroids=centroids, pq_m=np.int64(settings["pq_m"]), pq_k=np.int64(k_used))
        atomic_savez(work / "features.npz", stored)
        files = {}
        for name, arr in _index_variants(settings, stored).items():
            index = make_index(index_type, arr, codes=(name == "codes"))
            _write_index(index, work / f"{name}.faiss")
            files[name] = {"file": f"{name}.faiss", "bytes": index_bytes(index)}
        shutil.rmtree(work / "shards", ignore_errors=True)
        items = {
            "relpaths": [coll.relpaths[i] for i in keep],
            "sizes": [coll.sizes[i] for i in keep],
            "mtimes_ns": [coll.mtimes[i] for i in keep],
            "labels": [coll.labels[i] for i in keep],
        }
        labels = sorted({lab for lab in items["labels"] if lab is not None})
        manifest = {
            "format_version": FORMAT_VERSION,
            "kind": "sketchquant-gallery",
            "created": _now(),
            "sketchquant_version": _version(),
            "method": str(cfg.model.name),
            "checkpoint": record,
            "config": to_container(cfg),
            "image_root": str(coll.root),
            "source": str(Path(images).resolve()),
            "count": int(len(keep)),
            "dims": {key: dim},
            "settings": settings,
            "index_type": index_type,
            "data_dir": data_dir,
            "indexes": files,
            "class_names": labels,
            "skipped": bad,
            "items": items,
        }
        atomic_write_json(out / MANIFEST, manifest)  # the switch: the new gallery exists from here on
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    for stale in out.glob("data-*"):  # older data folders (and those of killed builds)
        if stale.name != data_dir and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    report = BuildReport(
        path=str(out),
        images=int(len(keep)),
        encoded=len(todo),
        reused=len(reuse),
        skipped=bad,
        seconds=time.perf_counter() - t0,
        features=list(files),
        index_type=index_type,
        bytes_on_disk=_dir_bytes(work) + (out / MANIFEST).stat().st_size,
    )
    if not quiet:
        what = f"{report.encoded} encoded, {report.reused} reused" if update else f"{report.encoded} encoded"
        feats = ", ".join(settings["features"])
        if settings.get("fusion") == "distance" and "fused" in settings["features"]:
            feats += " (fused by distance at query time)"
        size = report.bytes_on_disk
        human = f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 1024:.0f} KiB"
        print(
            f"gallery {out}: {report.images} images ({what}, {len(bad)} skipped), method "
            f"{cfg.model.name}, features {feats}, index {index_type}, {human}, {report.seconds:.1f} s"
        )
    return report


# --------------------------------------------------------------------------------------------------
# open + search


class Gallery:
    """An opened gallery: its manifest, indexes and the network that encodes queries."""

    def __init__(
        self, path: Path, manifest: dict, cfg: Any, module: Any, indexes: dict, stored: dict | None = None
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.cfg = cfg
        self.module = module
        self.indexes = indexes
        self._stored = stored
        self.settings = manifest["settings"]
        self.root = Path(manifest["image_root"])
        items = manifest["items"]
        self.relpaths: list[str] = items["relpaths"]
        self.labels: list[str | None] = items["labels"]
        self._transform, _ = _transform(cfg)
        self._proto: np.ndarray | None = None

    # ---- construction

    build = staticmethod(build_gallery)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        ckpt: str | os.PathLike | None = None,
        *,
        force: bool = False,
        overrides: Sequence[str] = (),
    ) -> Gallery:
        """Open gallery ``path``. The network comes from the manifest's checkpoint; ``ckpt`` overrides it
        and is refused when its sha256 differs from the manifest's (unless ``force``); a checkpoint of
        another method is always refused."""
        import faiss

        from sketchquant.app.checkpoints import load_checkpoint_config, load_trained_module
        from sketchquant.app.methods import method_of

        path = Path(path)
        manifest = _read_manifest(path)
        rec = manifest["checkpoint"]
        use = Path(ckpt) if ckpt is not None else Path(rec["path"])
        if not use.is_file():
            raise FileNotFoundError(
                f"checkpoint {use} (recorded in gallery {path}) does not exist: pass --ckpt"
                if ckpt is None
                else f"checkpoint {use} does not exist"
            )
        cfg, _ = load_checkpoint_config(use, list(overrides))
        if method_of(cfg).name != manifest["method"]:
            raise GalleryError(
                f"gallery {path} holds a '{manifest['method']}' model's features, but checkpoint {use} is a "
                f"'{method_of(cfg).name}' model: its queries cannot be compared with this gallery"
            )
        st = use.stat()
        same_file = ckpt is None and int(st.st_size) == rec["size"] and int(st.st_mtime_ns) == rec["mtime_ns"]
        if not same_file:
            digest = sha256_file(use)
            if digest != rec["sha256"]:
                msg = (
                    f"checkpoint {use} (sha256 {digest[:12]}…) is not the one gallery {path} was built with "
                    f"({rec['path']}, sha256 {rec['sha256'][:12]}…)"
                )
                if not force:
                    raise GalleryError(msg + ": rebuild the gallery, or pass --force to search anyway")
                print(f"warning: {msg}; searching anyway (--force)", file=sys.stderr)
        # the gallery's own config (eval, data) with the checkpoint's weights
        from sketchquant.app.methods import from_container

        cfg = from_container(manifest["config"], list(overrides))
        _, module, _ = load_trained_module(use, list(overrides))
        module.eval()
        data = path / manifest["data_dir"]
        indexes = {}
        for name, info in manifest["indexes"].items():
            try:
                indexes[name] = faiss.read_index(str(data / info["file"]))
            except RuntimeError as err:
                raise GalleryError(f"gallery {path}: index {info['file']} is unreadable: {err}") from err
        return cls(path, manifest, cfg, module, indexes)

    @property
    def stored(self) -> dict[str, np.ndarray]:
        """``features.npz``: the stored features (and PQ codebook), read on first use — searching an
        index does not need them (distance fusion does)."""
        if self._stored is None:
            with np.load(self.path / self.manifest["data_dir"] / "features.npz") as z:
                self._stored = {k: z[k] for k in z.files}
        return self._stored

    # ---- facts

    def __len__(self) -> int:
        return int(self.manifest["count"])

    @property
    def method(self) -> str:
        return self.manifest["method"]

    @property
    def features(self) -> list[str]:
        return list(self.settings["features"])

    @property
    def default_features(self) -> str:
        return self.settings["default"]

    def image_path(self, i: int) -> Path:
        rel = Path(self.relpaths[i])
        return rel if rel.is_absolute() else self.root / rel

    def describe(self) -> str:
        ck = self.manifest["checkpoint"]
        return (
            f"{len(self):,} photos · method {self.method} · checkpoint {Path(ck['path']).name} "
            f"(sha256 {ck['sha256'][:12]}) · index {self.manifest['index_type']}"
        )

    # ---- queries

    def _batch(self, queries: Sequence[Any]) -> tuple[torch.Tensor, list[str]]:
        from PIL import Image

        from datamodules.transforms import load_rgb

        tensors, names = [], []
        for i, q in enumerate(queries):
            if isinstance(q, str | os.PathLike):
                p = Path(q)
                if not p.is_file():
                    raise FileNotFoundError(f"query image {p} does not exist")
                try:
                    img = load_rgb(str(p))
                except Exception as err:
                    raise GalleryError(f"cannot read query image {p}: {err}") from err
                tensors.append(self._transform(img))
                names.append(str(q))
            elif isinstance(q, Image.Image):
                tensors.append(self._transform(_rgb(q)))
                names.append(f"<image {i}>")
            elif isinstance(q, np.ndarray):
                arr = q if q.dtype == np.uint8 else np.clip(q, 0, 255).astype(np.uint8)
                tensors.append(self._transform(_rgb(Image.fromarray(arr))))
                names.append(f"<array {i}>")
            elif isinstance(q, torch.Tensor):  # already transformed, 3 × H × W
                if q.ndim != 3:
                    raise GalleryError(
                        f"a query tensor must be 3 × H × W (transformed), got {tuple(q.shape)}"
                    )
                tensors.append(q.float())
                names.append(f"<tensor {i}>")
            else:
                raise GalleryError(f"cannot use a {type(q).__name__} as a query image")
        if not tensors:
            raise GalleryError("search needs at least one query image")
        return torch.stack(tensors), names

    @torch.no_grad()
    def encode(self, queries: Sequence[Any]) -> np.ndarray:
        """The query features as the gallery compares them (codes, or L2-normalised ``f``)."""
        x, _ = self._batch(queries)
        return self._encode_batch(x)

    @torch.no_grad()
    def _encode_batch(self, x: torch.Tensor) -> np.ndarray:
        out = self.module(x).cpu().numpy()
        return out.astype(np.float32) if self.settings["query"] == "image" else _normalise(out)

    def search(
        self, queries: Sequence[Any] | Any, k: int = 10, features: str | None = None
    ) -> list[QueryResult]:
        """Top-``k`` gallery items of each query (paths, PIL images, uint8 arrays or transformed tensors),
        ranked as the evaluation ranks (ascending distance, ties to the lower gallery position). ``k``
        larger than the gallery returns all of it. ``features``: ``raw`` / ``proto`` / ``fused``
        (method B; default fused) or ``codes`` (method A)."""
        if not isinstance(queries, list | tuple):
            queries = [queries]
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or int(k) < 1:
            raise GalleryError(f"k must be a positive integer, got {k!r}")
        features = features or self.default_features
        if features not in self.features:
            raise GalleryError(
                f"gallery {self.path} has features {', '.join(self.features)}, not {features!r}"
            )
        x, names = self._batch(queries)  # a bad query fails before the network runs
        q = self._encode_batch(x)
        dist, ind = self._rank(q, min(int(k), len(self)), features)
        results = []
        for qi, name in enumerate(names):
            hits = [
                Hit(
                    rank=r + 1,
                    index=int(i),
                    path=str(self.image_path(int(i))),
                    relpath=self.relpaths[int(i)],
                    distance=float(d),
                    label=self.labels[int(i)],
                )
                for r, (d, i) in enumerate(zip(dist[qi].tolist(), ind[qi].tolist()))
                if i >= 0
            ]
            results.append(QueryResult(query=name, features=features, hits=hits))
        return results

    def _rank(self, q: np.ndarray, k: int, features: str) -> tuple[np.ndarray, np.ndarray]:
        from sketchquant.core.retrieval.index import search_index

        if features == "fused" and self.settings.get("fusion") == "distance":
            from sketchquant.core.retrieval.prototypes import fused_distance_fn

            if self._proto is None:
                self._proto = _prototypes(self.stored)
            fn = fused_distance_fn(q, self.stored["raw"], self._proto, self.settings["fusion_lambda"])
            d = fn(torch.arange(q.shape[0]))
            dist, ind = torch.sort(d, dim=1, stable=True)
            return dist[:, :k].numpy(), ind[:, :k].numpy()
        return search_index(self.indexes[features], q, k)


def search_gallery(
    gallery: str | os.PathLike,
    queries: Sequence[str],
    *,
    k: int = 10,
    features: str | None = None,
    ckpt: str | os.PathLike | None = None,
    force: bool = False,
    as_json: bool = False,
    sheet: str | os.PathLike | None = None,
) -> list[QueryResult]:
    """The ``search`` command: open, search, print a table per query (or one JSON object), draw a
    contact sheet when asked."""
    import json

    for q in queries:  # a bad query path fails before the network is loaded
        if not Path(q).is_file():
            raise FileNotFoundError(f"query image {q} does not exist")
    g = Gallery.open(gallery, ckpt, force=force)
    results = g.search(list(queries), k=k, features=features)
    if as_json:
        print(
            json.dumps(
                {
                    "gallery": str(gallery),
                    "method": g.method,
                    "size": len(g),
                    "features": results[0].features,
                    "k": k,
                    "queries": [r.to_dict() for r in results],
                }
            )
        )
    else:
        from sketchquant.core.report import print_table

        for r in results:
            print_table(
                f"{r.query} — top {len(r.hits)} of {len(g)} ({r.features})",
                ["rank", "distance", "path", "label"],
                [(h.rank, h.distance, h.relpath, h.label or "") for h in r.hits],
            )
    if sheet:
        contact_sheet(g, results, sheet)
    return results


def contact_sheet(g: Gallery, results: list[QueryResult], out: str | os.PathLike, thumb: int = 128):
    """One row per query: the query, then its hits with rank, distance and label. Written atomically."""
    from PIL import Image, ImageDraw

    from datamodules.transforms import load_rgb
    from sketchquant.core.io import atomic_save_image

    cols = 1 + max((len(r.hits) for r in results), default=0)
    cap = 28
    sheet = Image.new("RGB", (cols * (thumb + 8) + 8, len(results) * (thumb + cap + 8) + 8), "white")
    draw = ImageDraw.Draw(sheet)

    def tile(path: str) -> Image.Image:
        try:
            im = load_rgb(path)
        except Exception:  # noqa: BLE001 - a moved photo is drawn grey
            im = Image.new("RGB", (thumb, thumb), (200, 200, 200))
        im.thumbnail((thumb, thumb))
        return im

    for row, r in enumerate(results):
        y = 8 + row * (thumb + cap + 8)
        q = r.query if Path(r.query).is_file() else None
        if q:
            sheet.paste(tile(q), (8, y))
        draw.rectangle([8, y, 8 + thumb - 1, y + thumb - 1], outline=(0, 90, 200), width=2)
        draw.text((8, y + thumb + 2), "query", fill=(0, 90, 200))
        for c, h in enumerate(r.hits, start=1):
            x = 8 + c * (thumb + 8)
            sheet.paste(tile(h.path), (x, y))
            draw.text((x, y + thumb + 2), f"#{h.rank} {h.distance:.3f}", fill=(0, 0, 0))
            if h.label:
                draw.text((x, y + thumb + 14), h.label[:20], fill=(90, 90, 90))
    atomic_save_image(sheet, out)
    print(f"contact sheet -> {out}")
    return Path(out)
