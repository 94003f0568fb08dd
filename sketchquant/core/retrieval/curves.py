"""Precision–recall curves for dashboards (interpolated precision at fixed recall levels, mean over queries).

For monitoring, not for reported numbers: it ranks at most ``max_queries`` queries (evenly spaced), so
it stays cheap at any scale. Ranking and ties follow the metrics (ascending L2 of normalised features,
ties by gallery index)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def precision_recall_curve(
    query_feats: Any,
    query_labels: Any,
    gallery_feats: Any,
    gallery_labels: Any,
    *,
    levels: int = 11,
    normalize: bool = True,
    max_queries: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``(recall_levels, mean_interpolated_precision)``; multi-hot labels use share-a-label relevance.

    Interpolated precision at recall r = max precision at any rank whose recall ≥ r (VOC 11-point style);
    queries without relevant items are skipped.
    """
    q = torch.as_tensor(np.asarray(query_feats), dtype=torch.float32)
    g = torch.as_tensor(np.asarray(gallery_feats), dtype=torch.float32)
    ql, gl = torch.as_tensor(np.asarray(query_labels)), torch.as_tensor(np.asarray(gallery_labels))
    if len(q) == 0 or len(g) == 0:
        raise ValueError("precision_recall_curve needs at least one query and one gallery item")
    pick = np.unique(np.linspace(0, len(q) - 1, num=min(max_queries, len(q))).round().astype(int))
    q, ql = q[pick], ql[pick]
    if normalize:
        q = torch.nn.functional.normalize(q, dim=1)
        g = torch.nn.functional.normalize(g, dim=1)
    dist = torch.cdist(q, g)
    order = torch.from_numpy(
        np.lexsort((np.broadcast_to(np.arange(g.shape[0]), dist.shape), dist.numpy()), axis=-1)
    )
    if gl.dim() == 1:
        rel = ql[:, None] == gl[None, :]
    else:
        rel = (ql.float() @ gl.float().T) > 0
    rel = torch.gather(rel, 1, order).float()
    total = rel.sum(1)
    keep = total > 0
    rel, total = rel[keep], total[keep]
    recall_levels = np.linspace(0.0, 1.0, levels)
    if len(rel) == 0:
        return recall_levels, np.zeros(levels)
    hits = rel.cumsum(1)
    ranks = torch.arange(1, rel.shape[1] + 1, dtype=torch.float32)
    precision = (hits / ranks).numpy()
    recall = (hits / total[:, None]).numpy()
    out = np.zeros((len(rel), levels))
    for i, r in enumerate(recall_levels):
        mask = recall >= r - 1e-12
        out[:, i] = np.where(mask, precision, 0.0).max(axis=1)
    return recall_levels, out.mean(axis=0)
