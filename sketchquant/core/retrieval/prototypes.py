"""Prototype (product-quantised) gallery features, docs/method.md §B S5 (ClusterRetr subspace clustering).

Each gallery feature ``x`` is cut into ``M`` sub-vectors; k-means with ``K`` centres per subspace
(``faiss.ProductQuantizer``, never a hand-written k-means); every sub-vector is replaced by its
nearest centre → prototype ``x̂``. Two fusions:

- feature fusion (the patent, default): ``x̃ = (1 − λ)·x̂ + λ·x``, ranked like any gallery feature;
- distance fusion (ClusterRetr's ``fuse_expriment``): ``d(q, x) = (1 − λ)·‖q − x̂‖² + λ·‖q − x‖`` — the
  PQ term is nanopq's asymmetric distance ``dtable(q).adist(codes)``, a sum of **squared** sub-vector
  distances, the raw term scipy's unsquared ``cdist``, exactly as ClusterRetr adds them.

k-means runs on **every** gallery point by default, as ClusterRetr's nanopq (scipy ``kmeans2``, 20
iterations) does; faiss would otherwise sample 256 points per centre (``max_points_per_centroid``).

Normalisation: the metrics L2-normalise query and gallery features by default. Here query and raw
gallery features are normalised **once, before** the quantiser is fitted (when ``normalize=True``), and
the prototype / fused gallery features are then used **as they are** (``normalize=False`` for the
metrics): re-normalising ``x̂`` would change the distance the quantiser was fitted to minimise
(ClusterRetr ranks by the asymmetric PQ distance ``‖q − x̂‖`` of the normalised query and prototype).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from .metrics import sbir_metrics

#: the names of the three gallery variants (logged as test/…, test/proto/…, test/fused/…)
RAW, PROTO, FUSED = "raw", "proto", "fused"

__all__ = [
    "RAW",
    "PROTO",
    "FUSED",
    "fit_product_quantizer",
    "fitted_k",
    "prototype_features",
    "fuse_features",
    "fused_distance_fn",
    "prototype_retrieval_metrics",
]


def _as_f32(x: Any, field: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if a.ndim != 2:
        raise ValueError(f"{field} must be a 2-D array (N × d), got shape {a.shape}")
    if a.shape[0] == 0:
        raise ValueError(f"{field} is empty (0 rows)")
    bad = int((~np.isfinite(a)).sum())
    if bad:
        raise ValueError(f"{field} contains {bad} non-finite value(s) (NaN/Inf)")
    return a


#: faiss warns (on stderr, from C++) below this many points per centre; we warn once, in words, instead
MIN_POINTS_PER_CENTROID = 39


def fitted_k(n: int, k: int, min_points: int = MIN_POINTS_PER_CENTROID) -> int:
    """The centres per subspace a gallery of ``n`` points supports: the largest power of two ≤ ``k`` with at
    least ``min_points`` points per centre, and never fewer than 2 (``min_points`` 0: ``k`` capped at ``n``).

    A centre fitted on a handful of points is one of those points, not a prototype: on a small gallery
    (a user's folder of 100 photos) K = 32 centres give ~3 photos each and the fused features rank worse
    than the raw ones (docs/method.md §B S5)."""
    if n < 2:
        raise ValueError(f"a product quantiser needs at least 2 gallery points, got {n}")
    cap = min(k, n if min_points <= 0 else max(2, n // min_points))
    return 1 << (max(cap, 2).bit_length() - 1)


class FewPointsWarning(UserWarning):
    """The PQ centres are fitted on few gallery points: prototype and fused metrics are noisy."""


def fit_product_quantizer(
    gallery_feats: Any,
    m: int = 2,
    k: int = 32,
    seed: int = 0,
    niter: int = 20,
    max_points_per_centroid: int | None = None,
) -> faiss.ProductQuantizer:
    """Fit ``faiss.ProductQuantizer(d, m, log2 k)`` on the gallery features (float32 ``N × d``).

    ``niter`` k-means iterations (ClusterRetr: 20); ``max_points_per_centroid`` ``None`` trains on every
    gallery point (ClusterRetr), an int lets faiss sample ``k ×`` that many."""
    x = _as_f32(gallery_feats, "gallery_feats")
    n, d = x.shape
    if m <= 0:
        raise ValueError(f"m (number of subspaces) must be positive, got {m}")
    if d % m != 0:
        raise ValueError(f"feature dimension d={d} is not divisible by m={m} subspaces")
    if k <= 1 or k & (k - 1):
        raise ValueError(
            f"k={k} centres per subspace must be a power of two ≥ 2 (faiss PQ uses nbits = log2 k)"
        )
    if k > n:
        raise ValueError(f"k={k} centres per subspace is more than the gallery size {n}")
    pq = faiss.ProductQuantizer(d, m, int(k).bit_length() - 1)
    pq.cp.seed = int(seed)
    pq.cp.niter = int(niter)
    pq.cp.max_points_per_centroid = (
        max(1, -(-n // k)) if max_points_per_centroid is None else int(max_points_per_centroid)
    )
    pq.cp.min_points_per_centroid = 1  # our warning below replaces faiss' stderr line
    if n < MIN_POINTS_PER_CENTROID * k:
        warnings.warn(
            f"PQ prototypes: {n} gallery features for K={k} centres per subspace (fewer than "
            f"{MIN_POINTS_PER_CENTROID}·K = {MIN_POINTS_PER_CENTROID * k}): the centres are fitted on few "
            "points each, so prototype and fused metrics are noisy; a smaller eval.pq_k fits better",
            FewPointsWarning,
            stacklevel=2,
        )
    pq.train(x)
    return pq


def prototype_features(pq: faiss.ProductQuantizer, feats: Any) -> np.ndarray:
    """``pq.decode(pq.compute_codes(x))``: every sub-vector replaced by its nearest centre (float32)."""
    x = _as_f32(feats, "feats")
    if x.shape[1] != pq.d:
        raise ValueError(
            f"feats have dimension {x.shape[1]} but the quantiser was fitted on dimension {pq.d}"
        )
    return np.ascontiguousarray(pq.decode(pq.compute_codes(x)), dtype=np.float32)


def fuse_features(raw: Any, proto: Any, lam: float = 0.2) -> np.ndarray:
    """Feature fusion ``(1 − λ)·proto + λ·raw`` (float32)."""
    r = _as_f32(raw, "raw")
    p = _as_f32(proto, "proto")
    if r.shape != p.shape:
        raise ValueError(f"raw has shape {r.shape} but proto has shape {p.shape}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    return ((1.0 - lam) * p + lam * r).astype(np.float32)


def _squared(qc: torch.Tensor, g: torch.Tensor, g_sq: torch.Tensor) -> torch.Tensor:
    d = qc @ g.T
    d.mul_(-2.0).add_(g_sq[None, :]).add_((qc * qc).sum(1, keepdim=True))
    return d.clamp_(min=0.0)


def fused_distance_fn(
    query_feats: Any, raw_gallery: Any, proto_gallery: Any, lam: float = 0.2
) -> Callable[[torch.Tensor], torch.Tensor]:
    """ClusterRetr distance fusion for :func:`~sketchquant.core.retrieval.metrics.sbir_metrics`'s
    ``distance_fn``: ``f(query_indices) = (1 − λ)·‖q − x̂‖ + λ·‖q − x‖`` (``n × N``, float32).

    Features are used as given: pass them normalised the way the raw evaluation normalises them
    (:func:`prototype_retrieval_metrics` does).
    """
    q = torch.from_numpy(_as_f32(query_feats, "query_feats"))
    x = torch.from_numpy(_as_f32(raw_gallery, "raw_gallery"))
    xh = torch.from_numpy(_as_f32(proto_gallery, "proto_gallery"))
    if x.shape != xh.shape:
        raise ValueError(
            f"raw_gallery has shape {tuple(x.shape)} but proto_gallery has shape {tuple(xh.shape)}"
        )
    if q.shape[1] != x.shape[1]:
        raise ValueError(f"query_feats has dimension {q.shape[1]} but raw_gallery has dimension {x.shape[1]}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    x_sq = (x * x).sum(1)
    xh_sq = (xh * xh).sum(1)

    def dist(idx: torch.Tensor) -> torch.Tensor:
        qc = q[idx.cpu()]
        d = _squared(qc, xh, xh_sq).mul_(1.0 - lam)
        return d.add_(_squared(qc, x, x_sq).sqrt_(), alpha=lam)

    return dist


def prototype_retrieval_metrics(
    query: Any,
    q_labels: Any,
    gallery: Any,
    g_labels: Any,
    m: int = 2,
    k: int = 32,
    lam: float = 0.2,
    fusion: str = "feature",
    normalize: bool = True,
    seed: int = 0,
    max_points_per_centroid: int | None = None,
    variants: Sequence[str] = (RAW, PROTO, FUSED),
    sync_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    per_query: bool = False,
    **metric_kwargs: Any,
) -> Any:
    """SBIR metrics for the ``raw``, ``proto`` and ``fused`` gallery (docs/method.md §B S5–S6).

    ``fusion="feature"``: rank by ``x̃ = (1 − λ)x̂ + λx``; ``fusion="distance"``: rank by
    ``(1 − λ)‖q − x̂‖² + λ‖q − x‖`` (ClusterRetr). ``metric_kwargs`` go to :func:`sbir_metrics` (``map_at``, ``p_at``,
    ``ap``, ``chunk_size``, ``query_shard`` …; Euclidean metric only). See the module docstring for
    normalisation. ``variants``: which of the three to compute (the evaluator has ``raw`` already);
    ``sync_fn(prototypes) -> prototypes`` makes every process use the same prototypes (e.g. rank 0's).
    ``per_query=True`` returns ``(metrics, {variant: PerQuery})`` (see :func:`sbir_metrics`).
    """
    if fusion not in ("feature", "distance"):
        raise ValueError(f"unknown fusion {fusion!r}; expected 'feature' or 'distance'")
    for bad in ("normalize", "metric", "distance_fn"):
        if bad in metric_kwargs:
            raise ValueError(f"prototype_retrieval_metrics sets {bad} itself")
    q = _as_f32(query, "query")
    x = _as_f32(gallery, "gallery")
    if normalize:
        q = F.normalize(torch.from_numpy(q), dim=1).numpy()
        x = F.normalize(torch.from_numpy(x), dim=1).numpy()
    pq = fit_product_quantizer(x, m=m, k=k, seed=seed, max_points_per_centroid=max_points_per_centroid)
    xh = prototype_features(pq, x)
    if sync_fn is not None:
        xh = np.ascontiguousarray(sync_fn(xh), dtype=np.float32)
    out: dict[str, Any] = {}
    metric_kwargs["per_query"] = per_query
    if RAW in variants:
        out[RAW] = sbir_metrics(q, q_labels, x, g_labels, normalize=False, **metric_kwargs)
    if PROTO in variants:
        out[PROTO] = sbir_metrics(q, q_labels, xh, g_labels, normalize=False, **metric_kwargs)
    if FUSED in variants and fusion == "feature":
        out[FUSED] = sbir_metrics(
            q, q_labels, fuse_features(x, xh, lam), g_labels, normalize=False, **metric_kwargs
        )
    elif FUSED in variants:
        out[FUSED] = sbir_metrics(
            q, q_labels, x, g_labels, distance_fn=fused_distance_fn(q, x, xh, lam), **metric_kwargs
        )
    if per_query:  # each value is (metrics, PerQuery)
        return {v: r[0] for v, r in out.items()}, {v: r[1] for v, r in out.items()}
    return out
