"""Building (and updating) a gallery folder atomically."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sketchquant.app.checkpoints import load_network
from sketchquant.app.gallery.extract import extract_features
from sketchquant.app.gallery.lock import build_lock, helper_rank
from sketchquant.app.gallery.records import (
    FORMAT_VERSION,
    MANIFEST,
    BuildReport,
    Collection,
    GalleryError,
    list_images,
    now,
    version,
)
from sketchquant.app.gallery.store import (
    base_feature,
    check_policy,
    checkpoint_record,
    dir_bytes,
    expand_trainer_choice,
    fit_pq,
    gallery_settings,
    index_variants,
    is_codes,
    normalise,
    read_manifest,
    report_bad,
    write_index,
)
from sketchquant.app.rundir import job_id, restore_env
from sketchquant.core.config import to_container
from sketchquant.core.io import atomic_savez, atomic_write_json
from sketchquant.core.retrieval.factory import index_bytes, make_index
from sketchquant.core.retrieval.prototypes import FUSED, PROTO

BUILD_ENV = "SKETCHQUANT_GALLERY_BUILD"


def build_stamp(old: dict | None) -> str:
    """The name of this build's data folder, the same in every process of a multi-process build: the
    first process sets it in the environment (Lightning's re-launched DDP workers inherit it); under
    torchrun / SLURM every process derives it from the job id (and the gallery's current data folder)."""
    if os.environ.get(BUILD_ENV):
        return os.environ[BUILD_ENV]
    job = job_id()
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
    trust: bool = False,
) -> BuildReport | None:
    """Index ``images`` (a folder or a list file) with checkpoint ``ckpt`` into the gallery folder ``out``.

    ``overrides`` (``key=value``) go on top of the checkpoint's config (``eval.fusion=distance``,
    ``trainer.devices=2`` ...). Returns a :class:`BuildReport` (``None`` on helper processes of a
    multi-process build). One build at a time per folder (:mod:`.lock`): a second one fails at once with
    a message naming the first. The data folder of the gallery this build replaces is kept (a running
    server may still be opening it); older ones are removed."""
    check_policy(on_bad_image)
    out = Path(out)
    if update and not (out / MANIFEST).is_file():
        raise GalleryError(f"--update: {out} is not a gallery yet (build it without --update first)")
    if out.exists() and not out.is_dir():
        raise GalleryError(f"--out {out} exists and is not a folder")
    coll = list_images(images)
    args = dict(update=update, index_type=index_type, batch_size=batch_size, workers=workers)
    args.update(on_bad_image=on_bad_image, pq_m=pq_m, pq_k=pq_k, overrides=overrides, quiet=quiet)
    if os.environ.get(BUILD_ENV) or helper_rank():  # a helper process: the first one holds the lock
        return _build(Path(ckpt), images, coll, out, trust=trust, **args)
    with build_lock(out):
        return _build(Path(ckpt), images, coll, out, trust=trust, **args)


def _current_data_dir(out: Path) -> str | None:
    """The data folder the gallery's manifest names now (``None``: no readable manifest)."""
    try:
        return str(json.loads((out / MANIFEST).read_text(encoding="utf-8"))["data_dir"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _build(
    ckpt: Path,
    images: str | os.PathLike,
    coll: Collection,
    out: Path,
    *,
    update: bool,
    index_type: str | None,
    batch_size: int | None,
    workers: int | None,
    on_bad_image: str,
    pq_m: int | None,
    pq_k: int | None,
    overrides: Sequence[str],
    quiet: bool,
    trust: bool,
) -> BuildReport | None:
    t0 = time.perf_counter()
    old = read_manifest(out) if update else None  # under the lock: no other build switches it now
    previous = _current_data_dir(out)
    overrides = expand_trainer_choice(overrides)
    if pq_m is not None:
        overrides.append(f"eval.pq_m={int(pq_m)}")
    if pq_k is not None:
        overrides.append(f"eval.pq_k={int(pq_k)}")
    cfg, network, _ = load_network(ckpt, overrides, trust=trust)
    settings = gallery_settings(cfg)
    record = checkpoint_record(ckpt)
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

    data_dir = f"data-{build_stamp(old)}"
    work = out / data_dir
    feats = ok = None
    try:
        if todo:
            bs = int(batch_size or cfg.data.get("batch_size", 64) or 64)
            nw = int(workers if workers is not None else (cfg.data.get("num_workers", 0) or 0))
            outer = os.environ.get(BUILD_ENV)
            os.environ[BUILD_ENV] = data_dir[len("data-") :]
            try:
                feats, ok, main = extract_features(
                    cfg, network, [coll.paths[i] for i in todo], work / "shards", batch_size=bs, workers=nw
                )
            finally:
                restore_env(BUILD_ENV, outer)
            if not main:
                return None
        else:
            work.mkdir(parents=True, exist_ok=True)
        key = base_feature(settings)
        codes = is_codes(settings)
        dim = int(old_stored[key].shape[1]) if old_stored else int(feats.shape[1])
        rows = np.zeros((n, dim), np.uint8 if codes else np.float32)
        good = np.ones(n, bool)
        for i, j in reuse.items():
            rows[i] = old_stored[key][j]
        if todo:
            new = feats.astype(np.uint8) if codes else normalise(feats)
            rows[todo] = new
            good[todo] = ok
        bad = [coll.paths[i] for i in range(n) if not good[i]]
        report_bad(bad, n, on_bad_image)
        keep = np.flatnonzero(good)
        if len(keep) == 0:
            raise GalleryError(f"none of the {n} images under {images} could be read")
        stored: dict[str, np.ndarray] = {key: np.ascontiguousarray(rows[keep])}
        if PROTO in settings["features"]:
            centroids, k_used = fit_pq(settings, stored[key])
            settings = {**settings, "pq_k_used": k_used}
            stored.update(pq_centroids=centroids, pq_m=np.int64(settings["pq_m"]), pq_k=np.int64(k_used))
        atomic_savez(work / "features.npz", stored)
        files = {}
        for name, arr in index_variants(settings, stored).items():
            index = make_index(index_type, arr, codes=codes and name == key)
            write_index(index, work / f"{name}.faiss")
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
            "created": now(),
            "sketchquant_version": version(),
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
    for stale in out.glob("data-*"):  # older generations (and the data folders of killed builds)
        if stale.name not in (data_dir, previous) and stale.is_dir():
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
        bytes_on_disk=dir_bytes(work) + (out / MANIFEST).stat().st_size,
    )
    if not quiet:
        what = f"{report.encoded} encoded, {report.reused} reused" if update else f"{report.encoded} encoded"
        feats = ", ".join(settings["features"])
        if settings.get("fusion") == "distance" and FUSED in settings["features"]:
            feats += " (fused by distance at query time)"
        size = report.bytes_on_disk
        human = f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 1024:.0f} KiB"
        print(
            f"gallery {out}: {report.images} images ({what}, {len(bad)} skipped), method "
            f"{cfg.model.name}, features {feats}, index {index_type}, {human}, {report.seconds:.1f} s"
        )
    return report
