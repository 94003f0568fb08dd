"""Method A after training: export uint8 codes, index them with FAISS, search the index with images.

- :func:`encode` runs a trained quantization checkpoint over one split of its data and writes an ``.npz``
  with ``codes`` (``uint8`` ``N×(P·d)``, window-major), ``labels``, ``paths``, ``class_names`` and the code
  layout (``bits``, ``num_windows``, ``dim``) plus the ``checkpoint`` path.
- :func:`build_index` turns that ``.npz`` into an ``IndexScalarQuantizer(QT_8bit_direct)`` (the bytes are
  stored as they are; distances are exact squared L2 between integer codes) with a JSON sidecar.
- :func:`search` encodes query images with the checkpoint's eval transform and prints the ranked database
  paths with their squared L2 code distances.

Every file is written to a temporary name in the target folder and moved into place with ``os.replace``:
an interrupted run never leaves a half-written ``.npz`` or index.

For searching a photo collection, :mod:`sketchquant.app.gallery` (``sketchquant index --ckpt --images
--out`` / ``sketchquant search --gallery``) serves both methods with a manifest; the ``.npz`` → index →
``search --index`` path here stays for a configured dataset split and for existing code files.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from sketchquant.app.checkpoints import checkpoint_config, load_network, read_checkpoint
from sketchquant.core.batch import LABEL
from sketchquant.core.config import as_kwargs
from sketchquant.core.io import atomic_savez
from sketchquant.core.retrieval.index import build_code_index, load_index, save_index, search_index
from sketchquant.datamodules.transforms import build_eval_transform, image_settings, load_rgb
from sketchquant.lightning_modules.components.irelu import check_bits

__all__ = ["encode", "build_index", "search", "load_quantization_model", "read_codes"]

SPLITS = ("database", "query", "train")
CODE_FIELDS = ("codes", "labels", "paths", "class_names", "bits", "num_windows", "dim", "checkpoint")


# --------------------------------------------------------------------------------------------------
# model loading


def load_quantization_model(ckpt: str | os.PathLike, overrides: Sequence[str] = (), *, trust: bool = False):
    """``(cfg, encoder, checkpoint dict)``: a code-making (method A) checkpoint's config (``overrides`` on
    top) and its :class:`QuantizationEncoder` with the trained weights, in eval mode; other methods are
    refused."""
    ckpt_dict = read_checkpoint(ckpt, trust=trust)
    cfg = checkpoint_config(ckpt_dict, ckpt, list(overrides), need="codes")
    check_bits(cfg.model.bits)  # a clear error before anything is built
    cfg, network, ckpt_dict = load_network(ckpt, list(overrides), need="codes", ckpt=ckpt_dict, cfg=cfg)
    return cfg, network.encoder, ckpt_dict


# --------------------------------------------------------------------------------------------------
# small file helpers


def _npz_path(out: str | os.PathLike) -> Path:
    """``out`` as written: ``.npz`` is appended when missing (as ``np.savez`` itself would)."""
    path = Path(out)
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


# --------------------------------------------------------------------------------------------------
# encode


def encode(
    ckpt: str | os.PathLike,
    out: str | os.PathLike,
    split: str = "database",
    overrides: Sequence[str] = (),
    *,
    batch_size: int | None = None,
    trust: bool = False,
) -> dict[str, Any]:
    """Encode ``split`` (``database`` / ``query`` / ``train``) of the checkpoint's data into ``out``.

    ``overrides`` (``key=value``) go on top of the checkpoint's config, e.g. ``data.root=...``.
    Returns ``{"path", "n", "bytes_per_image", "total_bytes"}``."""
    from sketchquant.app.build import build_datamodule  # reading a data split: Lightning's DataModule

    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    path = _npz_path(out)
    cfg, enc, _ = load_quantization_model(ckpt, overrides, trust=trust)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("test")
    if int(dm.num_classes) != int(enc.num_classes):
        raise ValueError(
            f"the data under {dm.root} has {dm.num_classes} classes but checkpoint {ckpt} was "
            f"trained on {enc.num_classes}"
        )
    ds = dm.eval_dataset(split)  # the eval transform: no augmentation, also for train
    loader = DataLoader(
        ds, batch_size=int(batch_size or dm.batch_size), shuffle=False, num_workers=int(dm.num_workers)
    )
    codes, labels = [], []
    with torch.no_grad():
        for batch in loader:
            codes.append(enc.encode(batch["image"]).cpu().numpy())
            labels.append(batch[LABEL].cpu().numpy())
    codes_np = np.ascontiguousarray(np.concatenate(codes).astype(np.uint8, copy=False))
    label_np = np.concatenate(labels)
    label_np = label_np.astype(np.uint8) if dm.multi_label else label_np.astype(np.int64)
    arrays = {
        "codes": codes_np,
        "labels": label_np,
        "paths": np.asarray(ds.paths, dtype=str),
        "class_names": np.asarray(dm.class_names, dtype=str),
        "bits": np.int64(enc.bits),
        "num_windows": np.int64(enc.num_windows),
        "dim": np.int64(enc.dim),
        "checkpoint": np.asarray(str(Path(ckpt).resolve())),
        "split": np.asarray(split),
        "multi_label": np.bool_(dm.multi_label),
    }
    atomic_savez(path, arrays)
    n, per = codes_np.shape
    print(
        f"encoded {n} {split} images -> {path}: {per} bytes per image ({enc.num_windows} windows x "
        f"{enc.dim} dims, {enc.bits}-bit codes in uint8), {_human(codes_np.nbytes)} of codes"
    )
    return {"path": str(path), "n": int(n), "bytes_per_image": int(per), "total_bytes": int(codes_np.nbytes)}


# --------------------------------------------------------------------------------------------------
# index


def read_codes(codes_npz: str | os.PathLike) -> dict[str, Any]:
    """Load and check an ``encode`` ``.npz``: ``codes`` must be 2-D ``uint8``; ``labels``/``paths`` one
    entry per row. Errors name the file and the field."""
    path = Path(codes_npz)
    if not path.is_file():
        raise FileNotFoundError(f"codes file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as err:
        raise ValueError(f"codes file {path} is not a readable .npz: {err}") from err
    if "codes" not in data:
        raise ValueError(
            f"codes file {path} has no 'codes' field (fields: {', '.join(sorted(data)) or 'none'})"
        )
    codes = data["codes"]
    if codes.dtype != np.uint8:
        raise ValueError(f"codes file {path}: field 'codes' must be uint8, got {codes.dtype}")
    if codes.ndim != 2 or codes.shape[1] == 0:
        raise ValueError(f"codes file {path}: field 'codes' must be 2-D (N × P·d), got shape {codes.shape}")
    n = codes.shape[0]
    if n == 0:
        raise ValueError(f"codes file {path}: field 'codes' has no rows")
    for field in ("labels", "paths"):
        if field in data and len(data[field]) != n:
            raise ValueError(
                f"codes file {path}: field '{field}' has {len(data[field])} entries, 'codes' {n} rows"
            )
    if "num_windows" in data and "dim" in data:
        expect = int(data["num_windows"]) * int(data["dim"])
        if expect != codes.shape[1]:
            raise ValueError(
                f"codes file {path}: 'codes' has {codes.shape[1]} columns but num_windows × dim = {expect}"
            )
    if "bits" in data:
        top = (1 << int(data["bits"])) - 1
        if int(codes.max()) > top:
            raise ValueError(
                f"codes file {path}: field 'codes' holds {int(codes.max())} > 2^bits - 1 = {top}"
            )
    return data


def _scalar(data: dict, key: str):
    if key not in data:
        return None
    value = data[key]
    return value.item() if np.ndim(value) == 0 else value.tolist()


def build_index(codes_path: str | os.PathLike, out: str | os.PathLike) -> dict[str, Any]:
    """FAISS uint8 code index of an ``encode`` ``.npz`` at ``out`` (+ ``out.json`` with paths, labels,
    class names, checkpoint, bits, windows, dims). Overwrites atomically. Returns the sidecar metadata."""
    data = read_codes(codes_path)
    index = build_code_index(data["codes"])
    meta = {
        "paths": data["paths"].tolist() if "paths" in data else None,
        "labels": data["labels"].tolist() if "labels" in data else None,
        "class_names": data["class_names"].tolist() if "class_names" in data else None,
        "checkpoint": _scalar(data, "checkpoint"),
        "bits": _scalar(data, "bits"),
        "num_windows": _scalar(data, "num_windows"),
        "dim": _scalar(data, "dim"),
        "split": _scalar(data, "split"),
        "multi_label": _scalar(data, "multi_label"),
        "codes_file": str(Path(codes_path).resolve()),
    }
    meta = save_index(index, out, metadata=meta)
    n, d = data["codes"].shape
    print(
        f"indexed {n} codes of {d} bytes -> {out} (+ {out}.json), IndexScalarQuantizer QT_8bit_direct, "
        "squared L2"
    )
    return meta


# --------------------------------------------------------------------------------------------------
# search


def _read_query_images(images: Sequence[str | os.PathLike]) -> list:
    if not images:
        raise ValueError("search needs at least one query image")
    pics = []
    for img in images:
        p = Path(img)
        if not p.is_file():
            raise FileNotFoundError(f"query image {p} does not exist")
        try:
            pics.append(load_rgb(str(p)))
        except Exception as err:
            raise ValueError(f"cannot read query image {p}: {err}") from err
    return pics


def search(
    ckpt: str | os.PathLike,
    index_path: str | os.PathLike,
    queries: Sequence[str | os.PathLike],
    k: int = 10,
    overrides: Sequence[str] = (),
    *,
    quiet: bool = False,
    trust: bool = False,
) -> list[dict[str, Any]]:
    """Rank the indexed database for each query image; prints and returns
    ``[{"query", "results": [{"rank", "index", "path", "distance", "labels"}]}]`` (``distance`` is the
    squared L2 distance between uint8 codes; ``labels`` are class names when the index knows them)."""
    if isinstance(k, bool) or int(k) != k or int(k) < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    pics = _read_query_images(queries)  # before anything else: a bad path fails fast
    cfg, enc, _ = load_quantization_model(ckpt, overrides, trust=trust)
    index, meta = load_index(index_path, expected_dim=enc.feature_dim)
    if meta.get("bits") is not None and int(meta["bits"]) != enc.bits:
        raise ValueError(
            f"index {index_path} holds {meta['bits']}-bit codes but checkpoint {ckpt} makes "
            f"{enc.bits}-bit codes"
        )
    made_by = meta.get("checkpoint")
    if made_by and Path(made_by).resolve() != Path(ckpt).resolve():
        print(f"warning: index {index_path} was built with {made_by}, searching with {ckpt}", file=sys.stderr)
    data = image_settings(as_kwargs(cfg.data, drop=("kind",)), cfg.model.backbone)
    tf = build_eval_transform(
        data["image_size"], data["mean"], data["std"], data.get("interpolation") or "bilinear"
    )
    x = torch.stack([tf(p) for p in pics])
    with torch.no_grad():
        q = enc.encode(x).cpu().numpy()
    dist, ind = search_index(index, q.astype(np.float32), int(k))
    paths, labels, names = meta.get("paths"), meta.get("labels"), meta.get("class_names")

    def label_names(i: int):
        if labels is None:
            return None
        lab = labels[i]
        if isinstance(lab, list):  # multi-hot
            ids = [j for j, v in enumerate(lab) if v]
        else:
            ids = [int(lab)]
        return [names[j] for j in ids] if names else ids

    results = []
    for qi, img in enumerate(queries):
        rows = []
        for r, (d, i) in enumerate(zip(dist[qi].tolist(), ind[qi].tolist()), 1):
            if i < 0:
                continue
            rows.append(
                {
                    "rank": r,
                    "index": int(i),
                    "path": paths[i] if paths else str(i),
                    "distance": float(d),
                    "labels": label_names(i),
                }
            )
        results.append({"query": str(img), "results": rows})
        if not quiet:
            print(f"query {img} ({enc.feature_dim} bytes): top {len(rows)} of {index.ntotal}")
            for row in rows:
                lab = f"  [{';'.join(map(str, row['labels']))}]" if row["labels"] is not None else ""
                print(f"  {row['rank']:3d}  {row['distance']:10.1f}  {row['path']}{lab}")
    return results
