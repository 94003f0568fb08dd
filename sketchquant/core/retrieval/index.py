"""FAISS indexes for search, saved atomically with a JSON metadata sidecar.

- :func:`build_float_index` — exact ``IndexFlatL2`` / ``IndexFlatIP`` over float features.
- :func:`build_code_index` — method A's uint8 codes in ``IndexScalarQuantizer(QT_8bit_direct, L2)``:
  the bytes are stored as they are (1 byte per dimension) and distances are the exact squared L2
  distances of the integer codes (returned as float32, so exact while below 2^24).
- :func:`save_index` writes ``<path>`` and ``<path>.json`` each to a temporary file in the same folder
  and moves it into place with ``os.replace``: an existing index is never half-overwritten.
- :func:`search_index` re-sorts faiss' answer by (distance, gallery index) so ties are lowest index first.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
import weakref
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

__all__ = [
    "build_float_index",
    "build_code_index",
    "save_index",
    "load_index",
    "search_index",
    "index_metadata",
]

SIDECAR_SUFFIX = ".json"
#: an exact ``IndexFlatL2`` this large, asked for at most this many queries, is scanned by a torch product on
#: every core: faiss scans it on one thread when it gets fewer than 20 queries (one sketch from the page)
FAST_FLAT_MIN_ITEMS = 20_000
FAST_FLAT_MAX_QUERIES = 16
_SQ_NORMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # index → ((N, storage address), ‖x‖²)


def _np(x: Any, field: str, dtype: Any | None = None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{field} must be a 2-D array (N × d), got shape {a.shape}")
    if a.shape[1] == 0:
        raise ValueError(f"{field} has dimension 0")
    if dtype is not None:
        a = a.astype(dtype, copy=False)
    return np.ascontiguousarray(a)


def build_float_index(feats: Any, metric: str = "l2") -> faiss.Index:
    """Exact flat index: ``IndexFlatL2`` (squared L2) or ``IndexFlatIP`` (inner product)."""
    x = _np(feats, "feats", np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"feats contain {int((~np.isfinite(x)).sum())} non-finite value(s) (NaN/Inf)")
    if metric == "l2":
        index = faiss.IndexFlatL2(x.shape[1])
    elif metric == "ip":
        index = faiss.IndexFlatIP(x.shape[1])
    else:
        raise ValueError(f"unknown metric {metric!r}; expected 'l2' or 'ip'")
    index.add(x)
    return index


def build_code_index(codes: Any) -> faiss.Index:
    """uint8 codes ``N × D`` → ``IndexScalarQuantizer(D, QT_8bit_direct, METRIC_L2)``."""
    c = _np(codes, "codes")
    if c.dtype != np.uint8:
        if np.issubdtype(c.dtype, np.integer) and c.size and (c.min() < 0 or c.max() > 255):
            raise ValueError("codes must be in 0..255 for an 8-bit index")
        if not np.issubdtype(c.dtype, np.integer):
            raise ValueError(f"codes must be uint8 integers, got dtype {c.dtype}")
    x = np.ascontiguousarray(c.astype(np.float32))
    index = faiss.IndexScalarQuantizer(x.shape[1], faiss.ScalarQuantizer.QT_8bit_direct, faiss.METRIC_L2)
    index.train(x)  # a no-op for QT_8bit_direct, but faiss wants it called
    index.add(x)
    return index


def _kind_and_metric(index: faiss.Index) -> tuple[str, str]:
    metric = "ip" if index.metric_type == faiss.METRIC_INNER_PRODUCT else "l2"
    kind = type(faiss.downcast_index(index)).__name__
    return kind, metric


def _version() -> str:
    try:
        return version("sketchquant")
    except Exception:  # pragma: no cover - not installed
        return "unknown"


def index_metadata(index: faiss.Index, metadata: dict | None = None) -> dict:
    """The sidecar content: dimension, metric, kind, created, sketchquant version + caller fields
    (class names, labels, paths, checkpoint …)."""
    kind, metric = _kind_and_metric(index)
    meta = {
        "dimension": int(index.d),
        "metric": metric,
        "kind": kind,
        "ntotal": int(index.ntotal),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "sketchquant_version": _version(),
        "class_names": None,
        "labels": None,
        "paths": None,
        "checkpoint": None,
    }
    for key, value in (metadata or {}).items():
        if isinstance(value, np.ndarray | torch.Tensor):
            value = np.asarray(value.cpu() if isinstance(value, torch.Tensor) else value).tolist()
        meta[key] = value
    meta["dimension"], meta["metric"], meta["ntotal"] = int(index.d), metric, int(index.ntotal)
    for field in ("labels", "paths"):
        if meta.get(field) is not None and len(meta[field]) != index.ntotal:
            raise ValueError(
                f"metadata {field} has {len(meta[field])} entries but the index holds {index.ntotal}"
            )
    return meta


def _atomic_write(path: Path, writer: Callable[[str], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_index(index: faiss.Index, path: str | os.PathLike, metadata: dict | None = None) -> dict:
    """Write ``path`` (faiss) and ``path.json`` (metadata) atomically; returns the metadata written.

    The sidecar is replaced last, so a reader never sees a new sidecar next to an old index."""
    path = Path(path)
    meta = index_metadata(index, metadata)
    text = json.dumps(meta, indent=2, sort_keys=True)

    def write_json(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    _atomic_write(path, lambda tmp: faiss.write_index(index, tmp))
    _atomic_write(Path(str(path) + SIDECAR_SUFFIX), write_json)
    return meta


def load_index(path: str | os.PathLike, expected_dim: int | None = None) -> tuple[faiss.Index, dict]:
    """Read an index written by :func:`save_index` → ``(index, metadata)``; clear errors for a missing
    file, a missing or corrupt sidecar and a dimension mismatch."""
    path = Path(path)
    side = Path(str(path) + SIDECAR_SUFFIX)
    if not path.is_file():
        raise FileNotFoundError(f"index file {path} does not exist")
    if not side.is_file():
        raise FileNotFoundError(f"index {path} has no metadata sidecar {side}")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or "dimension" not in meta:
            raise ValueError("no 'dimension' field")
    except (ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"metadata sidecar {side} is corrupt: {exc}") from exc
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise ValueError(f"index file {path} cannot be read by faiss: {str(exc).splitlines()[0]}") from exc
    if int(index.d) != int(meta["dimension"]):
        raise ValueError(
            f"index {path} has dimension {index.d} but its sidecar {side} says {meta['dimension']}"
        )
    if expected_dim is not None and int(index.d) != int(expected_dim):
        raise ValueError(f"index {path} has dimension {index.d} but the model produces {expected_dim}")
    return index, meta


def search_index(index: faiss.Index, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(distances, indices)``, each ``Q × min(k, ntotal)``, ascending distance (L2 kinds: squared
    L2) or descending inner product (IP kinds). faiss already sorts by score, but the order of equal
    scores is not specified; we re-sort each row by (score, gallery index) so ties come lowest index
    first, as in the metrics. (Ties that straddle the k-th place are decided by faiss.)"""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k <= 0:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    q = _np(queries, "queries", np.float32)
    if q.shape[1] != index.d:
        raise ValueError(f"queries have dimension {q.shape[1]} but the index has dimension {index.d}")
    kk = min(int(k), int(index.ntotal))
    if kk == 0:
        raise ValueError("the index is empty")
    xb = _flat_l2_storage(index)
    if xb is not None and q.shape[0] <= FAST_FLAT_MAX_QUERIES and index.ntotal >= FAST_FLAT_MIN_ITEMS:
        return _search_flat_few(index, xb, q, kk)
    dist, ind = index.search(q, kk)
    score = -dist if index.metric_type == faiss.METRIC_INNER_PRODUCT else dist
    order = np.lexsort((ind, score), axis=-1)
    rows = np.arange(q.shape[0])[:, None]
    return dist[rows, order], ind[rows, order]


def _flat_l2_storage(index: faiss.Index) -> np.ndarray | None:
    """The ``N × d`` float32 vectors of an exact L2 ``IndexFlat``, as a view of faiss's own storage (no
    copy); ``None`` for every other kind."""
    idx = faiss.downcast_index(index)
    if not isinstance(idx, faiss.IndexFlat) or idx.metric_type != faiss.METRIC_L2 or idx.ntotal == 0:
        return None
    return faiss.rev_swig_ptr(idx.get_xb(), idx.ntotal * idx.d).reshape(idx.ntotal, idx.d)


def _search_flat_few(
    index: faiss.Index, xb: np.ndarray, q: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact flat search for a few queries on every core, ranked as :func:`search_index` ranks.

    Candidates: the ``2k + 16`` smallest of ``‖x‖² − 2⟨q, x⟩`` (one multithreaded product; ``‖x‖²`` is
    computed once per index and kept in a weak map beside it). Their squared L2 distances are then
    computed directly, as faiss computes them, and sorted by (distance, gallery index). Rounding in the
    expanded form moves an item by far less than the gap the ``k + 16`` spare candidates leave, so the
    answer is faiss's."""
    x = torch.from_numpy(xb)
    stamp = (xb.shape[0], xb.__array_interface__["data"][0])  # an index grown or refilled is recomputed
    stamp_norms = _SQ_NORMS.get(index)
    if stamp_norms is None or stamp_norms[0] != stamp:
        stamp_norms = _SQ_NORMS[index] = (stamp, torch.einsum("nd,nd->n", x, x))
    norms = stamp_norms[1]
    qt = torch.from_numpy(q)
    key = torch.addmm(norms[:, None], x, qt.T, alpha=-2.0)  # N × nq
    c = min(xb.shape[0], 2 * k + 16)
    cand = torch.topk(key, c, dim=0, largest=False, sorted=False).indices.T  # nq × c
    diff = x[cand] - qt[:, None, :]
    dist = torch.einsum("qcd,qcd->qc", diff, diff).numpy()
    ind = cand.numpy()
    order = np.lexsort((ind, dist), axis=-1)[:, :k]
    rows = np.arange(q.shape[0])[:, None]
    return dist[rows, order].astype(np.float32), ind[rows, order].astype(np.int64)
