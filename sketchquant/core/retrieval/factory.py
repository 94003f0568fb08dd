"""FAISS index types for galleries: exact ``flat``, approximate ``ivfpq`` and ``hnsw``, or any
``faiss.index_factory`` string (docs/method.md §F).

- ``flat``: ``IndexFlatL2`` over float features; over uint8 codes (``codes=True``) the
  ``IndexScalarQuantizer(QT_8bit_direct)`` of :func:`~sketchquant.core.retrieval.index.build_code_index`.
  Exact: the same ranking as the evaluation.
- ``ivfpq``: ``IVF<nlist>,PQ<m>np,RFlat`` with ``nlist ≈ 4·√N`` (at least 39 training points per list),
  ``m`` sub-quantisers of 8 bits (at least 4 dims each, at most 64), and an exact re-ranking of the
  ``k_factor · k`` PQ candidates over the stored float vectors (recall@10 close to 1 at a fraction of
  flat's search time; the memory is flat's plus the PQ codes). ``nprobe`` (max(16, nlist/32)) and
  ``k_factor`` are stored in the index file. ``k_factor`` is 64: on 1M class-clustered 512-d features
  recall@10 was 0.91 at 16, 0.98 at 32 and 0.999 at 64, for 2.3 → 2.9 ms a query (at 100k, 16 already
  gave 1.0). k-means samples 64 points per list / PQ centroid (faiss's default is 256). ``np``: faiss's
  polysemous training (a code reordering for Hamming-distance search, which galleries never use) is off;
  it took 48 s of a 1,000-photo build. ``IVF<nlist>,PQ<m>np`` without ``RFlat`` is the compact variant
  (a factory string).
- ``hnsw``: ``HNSW32`` (flat storage), ``efSearch`` stored in the index file.
- anything else is handed to ``faiss.index_factory`` (e.g. ``"IVF256,PQ32np,RFlat"``, ``"HNSW16"``).

All use squared L2, so scores compare with the exact index's. Plain faiss / numpy: no Lightning here.
"""

from __future__ import annotations

import math
from typing import Any

import faiss
import numpy as np

__all__ = ["INDEX_TYPES", "make_index", "index_factory_string", "index_bytes", "is_exact"]

INDEX_TYPES = ("flat", "ivfpq", "hnsw")
DEFAULT_NPROBE = 16
DEFAULT_EF_SEARCH = 64
DEFAULT_K_FACTOR = 64
#: k-means sample per IVF list and per PQ centroid (faiss: 256; it warns below 39): the build of a
#: million-photo gallery is then minutes, and recall@10 after the exact re-ranking is unchanged
TRAIN_POINTS_PER_CENTROID = 64


def _pq_m(d: int) -> int:
    """Sub-quantiser count: the largest divisor of ``d`` that leaves at least 4 dims per sub-vector and
    at most 64 code bytes."""
    best = 1
    for m in range(1, min(d, 64) + 1):
        if d % m == 0 and d // m >= 4:
            best = m
    return best


def index_factory_string(kind: str, d: int, n: int) -> str:
    """The ``faiss.index_factory`` string of ``kind`` for ``n`` vectors of dimension ``d``."""
    if kind == "flat":
        return "Flat"
    if kind == "ivfpq":
        nlist = max(1, min(int(4 * math.sqrt(max(n, 1))), n // 39))
        if n < 256:
            raise ValueError(
                f"ivfpq needs at least 256 photos to train its 8-bit product quantiser; the gallery has "
                f"{n} (use --index-type flat)"
            )
        return f"IVF{nlist},PQ{_pq_m(d)}np,RFlat"  # np: no polysemous training (48 s even for 1k items)
    if kind == "hnsw":
        return "HNSW32"
    return kind


def make_index(kind: str, data: Any, *, codes: bool = False, seed: int = 0) -> faiss.Index:
    """A trained index of ``kind`` holding ``data`` (float32 ``N × d``, or uint8 codes)."""
    x = np.ascontiguousarray(np.asarray(data, dtype=np.float32))
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"an index needs a non-empty N × d array, got shape {x.shape}")
    n, d = x.shape
    if kind == "flat" and codes:
        index = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit_direct, faiss.METRIC_L2)
    else:
        spec = index_factory_string(kind, d, n)
        try:
            index = faiss.index_factory(d, spec, faiss.METRIC_L2)
        except RuntimeError as err:
            raise ValueError(
                f"--index-type {kind!r} is neither one of {', '.join(INDEX_TYPES)} nor a faiss "
                f"index_factory string faiss accepts for dimension {d}: {str(err).splitlines()[0]}"
            ) from None
    if not index.is_trained:
        ivf = _ivf(index)
        if ivf is not None:
            ivf.cp.seed = seed
            ivf.cp.max_points_per_centroid = TRAIN_POINTS_PER_CENTROID
            pq = getattr(faiss.downcast_index(ivf), "pq", None)
            if pq is not None:
                pq.cp.max_points_per_centroid = TRAIN_POINTS_PER_CENTROID
            if ivf.nlist > n:
                raise ValueError(f"index {kind!r} has {ivf.nlist} lists but the gallery only {n} items")
        try:
            index.train(x)
        except RuntimeError as err:
            raise ValueError(
                f"cannot train index {kind!r} on {n} items: {str(err).splitlines()[0]}"
            ) from None
    index.add(x)
    ivf = _ivf(index)
    if ivf is not None:
        ivf.nprobe = min(ivf.nlist, max(DEFAULT_NPROBE, ivf.nlist // 32))
    hnsw = _hnsw(index)
    if hnsw is not None:
        hnsw.hnsw.efSearch = DEFAULT_EF_SEARCH
    refine = faiss.downcast_index(index)
    if isinstance(refine, faiss.IndexRefine):
        refine.k_factor = DEFAULT_K_FACTOR
    return index


def _ivf(index: faiss.Index):
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _hnsw(index: faiss.Index):
    idx = faiss.downcast_index(index)
    if isinstance(idx, faiss.IndexRefine | faiss.IndexPreTransform):
        inner = idx.base_index if isinstance(idx, faiss.IndexRefine) else idx.index
        idx = faiss.downcast_index(inner)
    return idx if hasattr(idx, "hnsw") else None


def is_exact(index: faiss.Index) -> bool:
    """Flat and 8-bit-direct indexes rank exactly; the others approximate."""
    idx = faiss.downcast_index(index)
    if isinstance(idx, faiss.IndexFlat):
        return True
    return (
        isinstance(idx, faiss.IndexScalarQuantizer) and idx.sq.qtype == faiss.ScalarQuantizer.QT_8bit_direct
    )


def index_bytes(index: faiss.Index) -> int:
    """Size of the serialised index in bytes."""
    return int(faiss.serialize_index(index).size)
