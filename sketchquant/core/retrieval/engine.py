"""The one ranking engine: exact, tie-safe ranks of the relevant gallery items, query chunk by chunk.

Every metric of :mod:`.metrics` needs, per query, the ascending 1-based ranks of its relevant gallery
items under the order *(distance, gallery index)* — ties broken by the lowest gallery index (SPEC §C).
The query × gallery distance matrix is never built whole: queries go in chunks of rows, and for a chunk
(``m × N`` keys, lower = closer) :func:`relevant_ranks` finds those ranks with whole-chunk torch ops on
the keys' device:

- per row, a monotone (non-decreasing) bucketing ``b = clip(key·scale + c, 0, B + 1)`` of the keys,
  with ``scale`` and ``c`` from the row's relevant keys; one ``bincount`` over row-offset buckets gives
  the number of items in the buckets below each relevant item's bucket — those are strictly closer;
- items sharing a bucket with a relevant item are then ordered exactly, by (key, gallery index), with
  one stable sort of only those candidates; ``rank = 1 + #below + #closer in the same bucket``.

Whatever the rounding of ``key·scale + c``, a lower bucket never holds a farther item, so the ranks are
exact for any float or integer-valued keys. :func:`per_query_metrics` turns padded ranks into AP / P@k.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .checks import metric_name

#: bytes of working memory per query × gallery cell of a chunk (keys, buckets, counts, temporaries)
BYTES_PER_CELL = 40


# ----------------------------------------------------------------------------------------------------
# keys: distances of a chunk of queries to the whole gallery
# ----------------------------------------------------------------------------------------------------
def prepare(q: torch.Tensor, g: torch.Tensor, normalize: bool) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``(q, g, exact)``: integer features without normalisation are ranked exactly (float64, exact up
    to 2^53); everything else in float32, L2-normalised when ``normalize``."""
    if not q.is_floating_point() and not g.is_floating_point() and not normalize:
        return q.to(torch.float64), g.to(torch.float64), True
    q, g = q.to(torch.float32), g.to(torch.float32)
    if normalize:
        q, g = F.normalize(q, dim=1), F.normalize(g, dim=1)
    return q, g, False


def distance_fill(
    q: torch.Tensor, g: torch.Tensor, metric: str
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """``fill(query_indices, out)`` writes the ``n × N`` distances into ``out``: squared Euclidean
    ``‖q‖² + ‖g‖² − 2 q·g`` (``"l2"``) or ``−q·g`` (``"ip"``)."""
    g_t = g.T
    q_max = float((q * q).sum(1).max()) ** 0.5
    g_max = float((g * g).sum(1).max()) ** 0.5
    if not math.isfinite((q_max + g_max) ** 2) or (q_max + g_max) ** 2 > 1e37:
        raise ValueError("feature norms are too large: distances would overflow float32")
    if metric == "ip":

        def fill_ip(idx: torch.Tensor, out: torch.Tensor) -> None:
            torch.matmul(q[idx], g_t, out=out)
            out.neg_()

        return fill_ip
    g_sq = (g * g).sum(1)

    def fill_l2(idx: torch.Tensor, out: torch.Tensor) -> None:
        qc = q[idx]
        torch.matmul(qc, g_t, out=out)
        out.mul_(-2.0).add_(g_sq[None, :]).add_((qc * qc).sum(1, keepdim=True))

    return fill_l2


def user_fill(distance_fn: Callable[[torch.Tensor], Any], n_gallery: int) -> Callable:
    """A user ``distance_fn(query_indices) -> n × N`` as a ``fill``; its values are checked."""

    def fill(idx: torch.Tensor, out: torch.Tensor) -> None:
        d = distance_fn(idx)
        d = d if isinstance(d, torch.Tensor) else torch.as_tensor(np.asarray(d))
        if tuple(d.shape) != (idx.numel(), n_gallery):
            raise ValueError(
                f"distance_fn returned shape {tuple(d.shape)}, expected ({idx.numel()}, {n_gallery})"
            )
        out.copy_(d)
        if not bool(torch.isfinite(out.sum())):
            bad = int((~torch.isfinite(out)).sum())
            if bad:
                raise ValueError(f"distances contain {bad} non-finite value(s) (NaN/Inf)")

    return fill


def chunk_rows(n_gallery: int, chunk_size: int | None, memory_budget_mb: float) -> int:
    if chunk_size is not None:
        if int(chunk_size) <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        return int(chunk_size)
    if memory_budget_mb <= 0:
        raise ValueError(f"memory_budget_mb must be positive, got {memory_budget_mb}")
    return max(1, int(memory_budget_mb * 2**20 // (BYTES_PER_CELL * n_gallery)))


# ----------------------------------------------------------------------------------------------------
# ranks of the relevant items
# ----------------------------------------------------------------------------------------------------
def relevant_ranks(
    keys: torch.Tensor, cols: torch.Tensor, n_rel: torch.Tensor, n_buckets: int | None = None
) -> torch.Tensor:
    """Ascending 1-based ranks of each row's relevant items under the order (key, column), ``m × L``
    int64, padded with ``N + 1`` beyond ``n_rel``.

    ``keys`` ``m × N`` (float; lower = closer), ``cols`` ``m × L`` the relevant columns of each row
    (entries at and beyond ``n_rel[row]`` are ignored), ``n_buckets`` buckets per row (default ``N``).
    """
    m, n = keys.shape
    dev, L = keys.device, cols.shape[1]
    n_rel = n_rel.to(dev)
    nb = max(2, int(n_buckets) if n_buckets is not None else n)
    valid = torch.arange(L, device=dev)[None, :] < n_rel[:, None]
    if L == 0:
        return torch.empty(m, 0, dtype=torch.int64, device=dev)
    kr = keys.gather(1, cols)
    big = torch.finfo(keys.dtype).max
    has = n_rel > 0
    lo = torch.where(has, torch.where(valid, kr, big).amin(1), 0.0).double()
    hi = torch.where(has, torch.where(valid, kr, -big).amax(1), 0.0).double()
    bound = max(1.0, float(keys.abs().amax()))  # |key·scale| stays far below the float32 maximum
    span = hi - lo
    scale = torch.where(span > 0, (nb - 1) / span.clamp(min=1e-300), 1.0).clamp(max=1e36 / bound)
    shift = 1.0 - lo * scale
    t = torch.addcmul(shift.to(keys.dtype)[:, None], keys, scale.to(keys.dtype)[:, None])
    t.clamp_(0, nb + 1)  # a monotone map of each row's keys: lower bucket ⇒ strictly closer
    nbp = nb + 2
    b = t.to(torch.int32 if m * nbp < 2**31 else torch.int64)
    del t
    b += (torch.arange(m, device=dev, dtype=b.dtype) * nbp)[:, None]
    b_flat = b.view(-1)
    hist = torch.bincount(b_flat, minlength=m * nbp)
    below = hist.view(m, nbp).cumsum(1).view(-1) - hist
    rb = b.gather(1, cols).long()
    ranks = below[rb] + 1
    shared = (hist[rb] > 1) & valid
    if bool(shared.any()):
        ranks[shared] += _within_bucket(keys, b_flat, rb[shared], shared, cols, nbp)
    ranks = torch.where(valid, ranks, torch.full_like(ranks, n + 1))
    return ranks.sort(dim=1).values


def _within_bucket(
    keys: torch.Tensor,
    b_flat: torch.Tensor,
    rel_buckets: torch.Tensor,
    shared: torch.Tensor,
    cols: torch.Tensor,
    nbp: int,
) -> torch.Tensor:
    """For the relevant items in shared buckets: how many items of their bucket come first under
    (key, column). Only the items of those buckets are sorted."""
    m, n = keys.shape
    mark = torch.zeros(m * nbp, dtype=torch.bool, device=keys.device)
    mark[rel_buckets] = True
    pos = mark.index_select(0, b_flat).nonzero().squeeze(1)  # flat (row, column) order
    kc = keys.view(-1)[pos] + 0.0  # -0.0 → +0.0
    order = torch.sort(kc, stable=True).indices  # by key, then (row, column)
    order = order[torch.sort(b_flat[pos][order], stable=True).indices]  # by bucket (row), key, column
    sb = b_flat[pos][order]
    within = torch.arange(sb.numel(), device=keys.device) - torch.searchsorted(sb, sb, side="left")
    inv = torch.empty_like(order)
    inv[order] = torch.arange(order.numel(), device=keys.device)
    rows = torch.arange(m, device=keys.device)[:, None].expand_as(cols)[shared]
    slot = rows * n + cols[shared]
    return within[inv[torch.searchsorted(pos, slot)]]


# ----------------------------------------------------------------------------------------------------
# metrics from ranks
# ----------------------------------------------------------------------------------------------------
def per_query_metrics(
    ranks: torch.Tensor,
    n_rel: torch.Tensor,
    n_gallery: int,
    map_at: list,
    p_at: list,
    ap: str,
    protocol: str,
) -> dict[str, torch.Tensor]:
    """Per-query AP@k / P@k (float64) from padded ascending ranks (SPEC §C formulas)."""
    ranks = ranks.to(torch.float64)
    tot = n_rel.to(device=ranks.device, dtype=torch.float64)
    j = torch.arange(1, ranks.shape[1] + 1, dtype=torch.float64, device=ranks.device)
    out: dict[str, torch.Tensor] = {}
    for k in map_at:
        kk = n_gallery if k == "all" else min(int(k), n_gallery)
        in_top = ranks <= kk
        prec = torch.where(in_top, j / ranks, torch.zeros_like(ranks))
        if protocol == "sbir":
            if ap == "voc":
                prec = torch.flip(torch.cummax(torch.flip(prec, [1]), dim=1).values, [1]) * in_top
            denom = torch.clamp(torch.minimum(tot, torch.full_like(tot, kk)), min=1.0)
            out[metric_name("map", k)] = prec.sum(1) / denom
        else:
            hits = in_top.sum(1).to(torch.float64)
            out[metric_name("map", k)] = torch.where(
                hits > 0, prec.sum(1) / hits.clamp(min=1.0), torch.zeros_like(hits)
            )
    for k in p_at:
        kk = n_gallery if k == "all" else min(int(k), n_gallery)
        out[metric_name("p", k)] = (ranks <= kk).sum(1).to(torch.float64) / kk
    return out


# ----------------------------------------------------------------------------------------------------
# the chunk loop
# ----------------------------------------------------------------------------------------------------
def run(
    fill: Callable[[torch.Tensor, torch.Tensor], None],
    queries: torch.Tensor,
    n_gallery: int,
    relevant: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    dtype: torch.dtype,
    map_at: list,
    p_at: list,
    ap: str,
    protocol: str,
    chunk: int,
    device: torch.device,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-query metric values (float64, on ``device``) of the query indices ``queries``, in that order,
    and each one's number of relevant gallery items.

    ``fill(indices, out)`` writes a chunk's keys; ``relevant(indices) -> (cols m × L, n_rel m)``."""
    n_query = queries.numel()
    chunk = max(1, min(chunk, n_query))
    buf = torch.empty(chunk * n_gallery, device=device, dtype=dtype)
    per: dict[str, list[torch.Tensor]] = {}
    tots: list[torch.Tensor] = []
    for start in range(0, n_query, chunk):
        idx = queries[start : start + chunk]
        keys = buf[: idx.numel() * n_gallery].view(idx.numel(), n_gallery)
        fill(idx, keys)
        cols, n_rel = relevant(idx)
        ranks = relevant_ranks(keys, cols, n_rel)
        tots.append(n_rel)
        for name, v in per_query_metrics(ranks, n_rel, n_gallery, map_at, p_at, ap, protocol).items():
            per.setdefault(name, []).append(v)
    return {k: torch.cat(v) for k, v in per.items()}, torch.cat(tots)


def class_relevance(
    ql: torch.Tensor, gl: torch.Tensor
) -> tuple[Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """Single-label relevance (same class): ``(relevant, n_rel of every query)``; a table of each
    class's gallery columns (ascending) is built once."""
    order = torch.argsort(gl, stable=True)
    classes, counts = torch.unique(gl, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    width = int(counts.max())
    table = torch.zeros(classes.numel(), width, dtype=torch.int64, device=gl.device)
    j = torch.arange(width, device=gl.device)
    ok = j[None, :] < counts[:, None]
    table[ok] = order[(starts[:, None] + j[None, :])[ok]]
    pos = torch.searchsorted(classes, ql).clamp(max=classes.numel() - 1)
    has = classes[pos] == ql
    n_rel = torch.where(has, counts[pos], torch.zeros_like(pos))

    def relevant(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nr = n_rel[idx]
        width_c = max(1, int(nr.max()))
        return table[pos[idx], :width_c], nr

    return relevant, n_rel


def mask_relevance(rel_fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable:
    """Relevance from a boolean ``m × N`` mask per chunk (multi-label): its columns, padded."""

    def relevant(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rel = rel_fn(idx)
        n_rel = rel.sum(1)
        width = max(1, int(n_rel.max()))
        rows, cols = rel.nonzero(as_tuple=True)
        slot = torch.arange(rows.numel(), device=rel.device) - (torch.cumsum(n_rel, 0) - n_rel)[rows]
        out = torch.zeros(rel.shape[0], width, dtype=torch.int64, device=rel.device)
        out[rows, slot] = cols
        return out, n_rel

    return relevant


# ----------------------------------------------------------------------------------------------------
# nearest neighbours
# ----------------------------------------------------------------------------------------------------
def topk_keys(keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` smallest keys of each row and their columns, ordered by (key, column)."""
    kth = torch.topk(keys, k, dim=1, largest=False, sorted=True).values[:, -1:]
    less = keys < kth
    eq = keys == kth
    take = less | (eq & (eq.cumsum(1) <= k - less.sum(1, keepdim=True)))
    rows, cols = take.nonzero(as_tuple=True)
    cols = cols.view(keys.shape[0], k)
    vals = keys.gather(1, cols) + 0.0
    order = torch.sort(vals, dim=1, stable=True).indices
    return vals.gather(1, order), cols.gather(1, order)
