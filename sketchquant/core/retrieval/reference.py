"""Per-query reference implementations: the published evaluation code, transliterated.

SAKE (``eval_AP_inner`` / ``VOCap`` / ``eval_precision``, mean over each class's queries then over the
classes) and DeepHash-pytorch (``CalcTopMap``), one query at a time in numpy, with the one deliberate
change that the sort is by (distance, gallery index) — the published code uses an unstable
``np.argsort`` whose tie order is arbitrary (docs/method.md §C). Slow on purpose: the tests and
``benchmarks/eval_speed.py`` check the fast engine against these.

``dist`` arguments are anything with ``dist[i]`` → the ``i``-th query's distance row (a ``Q × N`` array,
or :class:`DistanceRows` for galleries too large to hold every row).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "DistanceRows",
    "calc_top_map",
    "clusterretr_fused_distances",
    "eval_ap_inner",
    "eval_precision",
    "order",
    "precision_multi",
    "sbir",
    "sq_l2",
    "vocap",
]


def order(dist_row: np.ndarray) -> np.ndarray:
    """Gallery indices by ascending distance, ties by index (lowest first)."""
    return np.lexsort((np.arange(dist_row.shape[0]), dist_row))


def vocap(rec: np.ndarray, prec: np.ndarray) -> float:
    mrec = np.append(0, rec)
    mrec = np.append(mrec, 1)
    mpre = np.append(0, prec)
    mpre = np.append(mpre, 0)
    for ii in range(len(mpre) - 2, -1, -1):
        mpre[ii] = max(mpre[ii], mpre[ii + 1])
    msk = [i != j for i, j in zip(mrec[1:], mrec[0:-1])]
    return np.sum((mrec[1:][msk] - mrec[0:-1][msk]) * mpre[1:][msk])


def eval_ap_inner(inst_id, dist_row, gt_labels, top=None, voc=True) -> float:
    """SAKE's AP of one query (``top=None``: all); NaN when nothing is relevant."""
    pos_flag = gt_labels == inst_id
    tot = dist_row.shape[0]
    tot_pos = np.sum(pos_flag)
    tp = pos_flag[order(dist_row)]
    fp = np.logical_not(tp)
    if top is not None:
        top = min(top, tot)
        tp = tp[:top]
        fp = fp[:top]
        tot_pos = min(top, tot_pos)
    if tot_pos == 0:
        return np.nan
    rel = tp.copy()
    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    rec = tp / tot_pos
    prec = tp / (tp + fp)
    if voc:
        return vocap(rec, prec)
    return np.sum(prec[rel]) / tot_pos


def eval_precision(inst_id, dist_row, gt_labels, top=100) -> float:
    """SAKE's P@top of one query."""
    pos_flag = gt_labels == inst_id
    top = min(top, dist_row.shape[0])
    return np.sum(pos_flag[order(dist_row)][:top]) / top


def sbir(dist: Any, ql, gl, map_at: Sequence, p_at: Sequence, voc: bool = True) -> dict[str, float]:
    """SAKE's aggregation: class means of the per-query values (queries with nothing relevant left out),
    then their mean; ``…_micro`` = mean over queries. Same names as :func:`.metrics.sbir_metrics`."""
    ql, gl = np.asarray(ql), np.asarray(gl)
    out: dict[str, float] = {}
    classes = np.unique(ql)
    has_rel = np.array([np.any(gl == c) for c in ql])
    for k in map_at:
        top = None if k == "all" else k
        aps = np.array([eval_ap_inner(ql[i], dist[i], gl, top, voc) for i in range(len(ql))])
        cls = [np.nanmean(aps[ql == c]) for c in classes if np.any(~np.isnan(aps[ql == c]))]
        out[f"map_{k}"] = np.mean(cls)
        out[f"map_{k}_micro"] = np.nanmean(aps)
    for k in p_at:
        ps = np.array([eval_precision(ql[i], dist[i], gl, k) for i in range(len(ql))])
        ps[~has_rel] = np.nan
        cls = [np.nanmean(ps[ql == c]) for c in classes if np.any(~np.isnan(ps[ql == c]))]
        out[f"p_{k}"] = np.mean(cls)
        out[f"p_{k}_micro"] = np.nanmean(ps)
    out["num_queries_no_relevant"] = int((~has_rel).sum())
    out["num_queries"] = len(ql)
    return out


def calc_top_map(dist: Any, q_multi, g_multi, topk) -> float:
    """DeepHash-pytorch ``CalcTopMap`` (``topk=None``: all) with multi-hot labels."""
    num_query = q_multi.shape[0]
    topkmap = 0
    for it in range(num_query):
        gnd = (np.dot(q_multi[it, :], g_multi.transpose()) > 0).astype(np.float32)
        gnd = gnd[order(dist[it])]
        tgnd = gnd[0:topk]
        tsum = np.sum(tgnd).astype(int)
        if tsum == 0:
            continue
        count = np.linspace(1, tsum, tsum)
        tindex = np.asarray(np.where(tgnd == 1)) + 1.0
        topkmap = topkmap + np.mean(count / tindex)
    return topkmap / num_query


def precision_multi(dist: Any, q_multi, g_multi, topk) -> float:
    """Mean P@topk with share-a-label relevance."""
    out = []
    for it in range(q_multi.shape[0]):
        gnd = (q_multi[it] @ g_multi.T > 0)[order(dist[it])]
        kk = min(topk, len(gnd))
        out.append(gnd[:kk].sum() / kk)
    return float(np.mean(out))


def sq_l2(q, g) -> np.ndarray:
    """Squared Euclidean distances in float64."""
    q = np.asarray(q).astype(np.float64)
    g = np.asarray(g).astype(np.float64)
    return (q * q).sum(1)[:, None] + (g * g).sum(1)[None, :] - 2 * q @ g.T


class DistanceRows:
    """``rows[i]`` = squared Euclidean (``"l2"``) or negative inner product (``"ip"``) distances of query
    ``i`` to the gallery in float64, of the L2-normalised features when ``normalize`` — one row at a time."""

    def __init__(self, q, g, metric: str = "l2", normalize: bool = True) -> None:
        q, g = np.asarray(q, dtype=np.float64), np.asarray(g, dtype=np.float64)
        if normalize:
            q = q / np.linalg.norm(q, axis=1, keepdims=True)
            g = g / np.linalg.norm(g, axis=1, keepdims=True)
        self.q, self.g, self.metric = q, g, metric
        self.g_sq = (g * g).sum(1)

    def __len__(self) -> int:
        return self.q.shape[0]

    def __getitem__(self, i: int) -> np.ndarray:
        s = self.g @ self.q[i]
        return -s if self.metric == "ip" else self.g_sq + self.q[i] @ self.q[i] - 2.0 * s


def clusterretr_fused_distances(q, x, centroids, codes, lam: float) -> np.ndarray:
    """ClusterRetr's ``fuse_expriment``: ``(1 − λ)·pq.dtable(q).adist(codes) + λ·cdist(q, x)``.

    ``centroids``: ``M × K × Ds`` (nanopq ``codewords``), ``codes``: ``N × M``. nanopq's ``dtable`` holds
    the **squared** distance of each query sub-vector to each centre (float32) and ``adist`` sums the
    entries the codes pick; scipy's ``cdist`` is the plain (unsquared) Euclidean distance."""
    q = np.asarray(q, dtype=np.float32)
    x = np.asarray(x, dtype=np.float32)
    m, ks, ds = centroids.shape
    raw = np.sqrt(((q.astype(np.float64)[:, None] - x[None]) ** 2).sum(-1))  # cdist (float64)
    out = np.empty((q.shape[0], x.shape[0]))
    for i, query in enumerate(q):
        dtable = np.empty((m, ks), dtype=np.float32)
        for s in range(m):
            dtable[s, :] = np.linalg.norm(centroids[s] - query[s * ds : (s + 1) * ds], axis=1) ** 2
        adist = np.sum(dtable[range(m), codes], axis=1)
        out[i] = (1 - lam) * adist + lam * raw[i]
    return out
