"""Retrieval metrics that match the published evaluation code (docs/method.md §C), computed in query chunks.

Two protocols, pure functions (torchmetrics style):

``sbir_metrics`` — SAKE ``eval_AP_inner`` / ``VOCap`` / ``eval_precision`` (also used by DSN and
ClusterRetr). For one query with ``k' = min(k, N_gallery)`` and ``R = min(k', #relevant in the whole
gallery)``::

    rec_i  = tp_i / R,  prec_i = tp_i / i           (i = 1 … k', tp_i = #relevant in the top i)
    VOC:   precision made monotone from the end (the appended end point has precision 0),
           AP = Σ over the ranks where recall changes of Δrecall × interpolated precision
         = (1/R) Σ_j max_{j' ≥ j, r_j' ≤ k'} j' / r_j'   over the relevant items at ranks r_1 < r_2 < …

SAKE never has ``R`` smaller than the number of relevant items it finds in the top ``k'``: that number
is at most ``k'`` and at most the gallery's number of relevant items, so it is at most ``R``. When the
gallery holds more relevant items than ``k'`` (e.g. mAP@200 with 600 relevant photos), ``R = k'``: the
query scores 1 only if all ``k'`` retrieved items are relevant, and recall never reaches 1 otherwise —
the final VOC step to recall 1 then has precision 0 and adds nothing. We reproduce exactly that.
``ap="standard"`` gives the non-interpolated ``(1/R) Σ_j j / r_j`` with the same ``R``.
``P@k = #relevant in the top k' / k'``. Aggregation (SAKE): mean over each class's queries, then mean
over the classes (``map_all``, ``map_200``, ``p_100`` …); the plain mean over queries is reported as
``…_micro``. A query whose class has no item in the gallery is left out of every metric (SAKE gets NaN
there and skips it with ``np.nanmean``) and counted in ``num_queries_no_relevant``; a class all of whose
queries are left out is left out of the class mean.

``hashing_metrics`` — DeepHash-pytorch ``CalcTopMap``: relevant = shares at least one label; AP@k =
mean over the relevant items found in the top ``k'`` of ``j / r_j`` (so divided by the number found;
a query with none there scores 0), mean over *all* queries. ``P@k = #relevant in the top k' / k'``.

Ranking, both protocols: ascending distance — squared Euclidean ``‖q‖² + ‖g‖² − 2 q·g`` (float32) of
the L2-normalised features for ``metric="l2"`` (the same order as SAKE's ``cdist``), ``−q·g`` for
``metric="ip"``. **Ties are broken by gallery index, lowest first** (the reference implementations use
an unstable ``np.argsort`` whose tie order is arbitrary; we fix it). Integer inputs (method A's uint8
codes) with ``normalize=False`` are compared exactly in integer arithmetic (float64 matmul, exact up
to 2^53), so no rounding ever merges or splits a tie.

How it scales: the query × gallery matrix is never built whole; :mod:`.engine` ranks query chunks of at
most ``chunk_size`` rows (default: as many as ``memory_budget_mb`` holds), evened out under that cap
(:func:`.keys.even_chunk`), with keys from :mod:`.keys` and relevance from :mod:`.relevance`;
``device=`` picks where, ``query_shard=`` / ``reduce_fn=`` split the queries over processes
(:mod:`.aggregate`). ``per_query=True`` also returns the per-query values behind every number
(:class:`.aggregate.PerQuery`; the default path does no extra work). Input checks live in :mod:`.checks`, per-query reference implementations of the
published code in :mod:`.reference`, the torchmetrics wrapper in :mod:`.torchmetric`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import aggregate, engine, keys, relevance
from .checks import (
    APS,
    METRICS,
    check_choice,
    check_feats,
    check_ks,
    check_multi_labels,
    check_pair,
    check_single_labels,
    metric_name,
    sources,
    to_tensor,
)

__all__ = [
    "MetricOptions",
    "sbir_metrics",
    "sbir_metrics_from_distances",
    "hashing_metrics",
    "topk_neighbors",
    "metric_name",
]

Reduce = aggregate.Reduce
PerQuery = aggregate.PerQuery
#: a metric function's return: the numbers, or ``(numbers, per-query values)`` with ``per_query=True``
Result = dict[str, float] | tuple[dict[str, float], PerQuery]


@dataclass(frozen=True)
class MetricOptions:
    """The keyword options :func:`sbir_metrics` and :func:`hashing_metrics` share, with their defaults.

    ``metric``: ``"l2"`` or ``"ip"`` (the module docstring). ``distance_fn(query_indices: LongTensor) ->
    (len(indices) × N)`` distances (lower = closer) replaces the built-in distance (features are then only
    validated; ``metric``/``normalize`` unused). ``chunk_size``: query rows ranked at once (default: as many
    as ``memory_budget_mb`` holds). ``source`` = (query name, gallery name), e.g. file paths, used in error
    messages.

    ``device``: where to rank (default: the gallery features' device; CUDA when they are there), same
    numbers everywhere. Sharded evaluation: with ``query_shard=(rank, world)`` this process ranks only its
    share of the queries against the whole gallery; ``reduce_fn`` sums the ``metrics × Q`` float64 matrix of
    per-query values (zero outside the share) over the processes — e.g. :func:`.torchmetric.all_reduce_sum`
    — so every process returns exactly the one-process numbers.

    ``per_query=True`` returns ``(numbers, PerQuery)``: every query's value of every metric (NaN for a query
    left out) from which :meth:`.aggregate.PerQuery.numbers` gives the numbers bit for bit (in every process
    when sharded).
    """

    metric: str = "l2"
    distance_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    chunk_size: int | None = None
    memory_budget_mb: float = 512
    source: Sequence[str] | None = None
    device: str | torch.device | None = None
    query_shard: tuple[int, int] | None = None
    reduce_fn: Reduce | None = None
    per_query: bool = False

    def check(self, query_feats: Any, gallery_feats: Any, map_at: Any, p_at: Any) -> tuple:
        """``(q, g, map_ks, p_ks, query source, gallery source)``, every input checked."""
        sq, sg = sources(self.source)
        check_choice(self.metric, METRICS, "metric")
        map_ks, p_ks = check_ks(map_at, p_at)
        return (*check_pair(query_feats, gallery_feats, sq, sg), map_ks, p_ks, sq, sg)

    def ranking(
        self, q: torch.Tensor, g: torch.Tensor, normalize: bool
    ) -> tuple[torch.device, torch.dtype, Callable, int]:
        """``(device, key dtype, fill, chunk rows)``: ranking runs on ``device`` (default: the gallery
        features' device), with the built-in distance or ``distance_fn`` (its values checked, copied to
        ``device``)."""
        dev = torch.device(self.device) if self.device is not None else g.device
        rows = keys.chunk_rows(g.shape[0], self.chunk_size, self.memory_budget_mb, dev)
        if self.distance_fn is not None:
            return dev, torch.float32, keys.user_fill(self.distance_fn, g.shape[0]), rows
        q, g, exact = keys.prepare(q.to(dev), g.to(dev), normalize)
        return dev, q.dtype, keys.distance_fill(q, g, self.metric, normalize and not exact), rows


def _sbir_run(
    fill: Callable,
    ql: torch.Tensor,
    gl: torch.Tensor,
    dtype: torch.dtype,
    device: torch.device,
    map_ks: list,
    p_ks: list,
    ap: str,
    chunk: int,
    query_shard: Any = None,
    reduce_fn: Reduce | None = None,
    per_query: bool = False,
) -> Result:
    ql, gl = ql.to(device), gl.to(device)
    relevant, n_rel = relevance.class_relevance(ql, gl)
    # queries in class order: a chunk's rows then share few relevant-column lists
    queries = torch.argsort(ql, stable=True)
    queries = queries[n_rel.index_select(0, queries) > 0]
    chunk = keys.even_chunk(queries.numel(), chunk)
    queries = aggregate.shard(queries, query_shard, chunk)
    per, _ = engine.run(fill, queries, gl.shape[0], relevant, dtype, map_ks, p_ks, ap, "sbir", chunk, device)
    full = dict(zip(per, aggregate.full(per, queries, ql.shape[0], reduce_fn)))
    out = aggregate.sbir_aggregate(full, n_rel, ql)
    return (out, aggregate.sbir_per_query(full, n_rel)) if per_query else out


def sbir_metrics(
    query_feats: Any,
    query_labels: Any,
    gallery_feats: Any,
    gallery_labels: Any,
    *,
    map_at: Iterable[int | str] = ("all",),
    p_at: Iterable[int | str] = (100,),
    ap: str = "voc",
    normalize: bool = True,
    **options: Any,
) -> Result:
    """Zero-shot SBIR metrics, SAKE-compatible (see the module docstring for the exact formulas).

    ``query_feats`` ``Q × d`` / ``gallery_feats`` ``N × d`` (numpy or torch, any device), labels 1-D class
    ids. ``options``: the fields of :class:`MetricOptions` (``metric``, ``distance_fn``, ``chunk_size``,
    ``memory_budget_mb``, ``source``, ``device``, ``query_shard``, ``reduce_fn``, ``per_query``).

    Returns ``map_<k>`` (``map_all`` for k="all") and ``p_<k>`` (class-mean), the same with ``_micro``
    (query mean), ``num_queries`` and ``num_queries_no_relevant``; with ``per_query=True``
    ``(numbers, PerQuery)``.
    """
    o = MetricOptions(**options)
    check_choice(ap, APS, "ap")
    q, g, map_ks, p_ks, sq, sg = o.check(query_feats, gallery_feats, map_at, p_at)
    ql = check_single_labels(query_labels, q.shape[0], "query_labels", "query_feats", sq)
    gl = check_single_labels(gallery_labels, g.shape[0], "gallery_labels", "gallery_feats", sg)
    dev, dtype, fill, chunk = o.ranking(q, g, normalize)
    return _sbir_run(
        fill, ql, gl, dtype, dev, map_ks, p_ks, ap, chunk, o.query_shard, o.reduce_fn, o.per_query
    )


def sbir_metrics_from_distances(
    dist: Any,
    query_labels: Any,
    gallery_labels: Any,
    *,
    map_at: Iterable[int | str] = ("all",),
    p_at: Iterable[int | str] = (100,),
    ap: str = "voc",
    chunk_size: int | None = None,
    memory_budget_mb: float = 512,
    source: Sequence[str] | None = None,
    per_query: bool = False,
) -> Result:
    """:func:`sbir_metrics` from a precomputed ``Q × N`` distance matrix (lower = closer; float64 input
    is ranked as float32, integer input exactly). Same names, tie rule and ``per_query``."""
    sq, sg = sources(source)
    check_choice(ap, APS, "ap")
    map_ks, p_ks = check_ks(map_at, p_at)
    d = check_feats(dist, "dist", None).cpu()
    ql = check_single_labels(query_labels, d.shape[0], "query_labels", "dist", sq)
    gl = check_single_labels(gallery_labels, d.shape[1], "gallery_labels", "dist (columns)", sg)
    dtype = torch.float32 if d.is_floating_point() else torch.float64
    fill = keys.user_fill(lambda idx: d[idx], d.shape[1])
    chunk = keys.chunk_rows(d.shape[1], chunk_size, memory_budget_mb, torch.device("cpu"))
    return _sbir_run(fill, ql, gl, dtype, torch.device("cpu"), map_ks, p_ks, ap, chunk, per_query=per_query)


def hashing_metrics(
    query_feats: Any,
    query_labels: Any,
    gallery_feats: Any,
    gallery_labels: Any,
    *,
    map_at: Iterable[int | str] = (1000,),
    p_at: Iterable[int | str] = (),
    normalize: bool = False,
    **options: Any,
) -> Result:
    """Multi-label retrieval metrics, DeepHash-pytorch ``CalcTopMap``-compatible.

    Labels: ``N × C`` 0/1 multi-hot, or ``N`` ints (turned into one-hot). Relevant = shares ≥ 1 label.
    Default ranking: plain (squared) Euclidean distance of the unnormalised features — for ±1 hash
    codes that is 4 × Hamming distance, the same order as ``CalcHammingDist``; uint8 codes are compared
    exactly. Returns ``map_<k>``, ``p_<k>`` (means over all queries), ``num_queries`` and
    ``num_queries_no_relevant`` (queries with no relevant gallery item; they score 0 and are kept, as in
    ``CalcTopMap``). ``options``: the fields of :class:`MetricOptions`, as in :func:`sbir_metrics`.
    """
    o = MetricOptions(**options)
    q, g, map_ks, p_ks, sq, sg = o.check(query_feats, gallery_feats, map_at, p_at)
    qt = to_tensor(query_labels, "query_labels", sq)
    gt = to_tensor(gallery_labels, "gallery_labels", sg)
    num_classes = None
    if qt.ndim == 1 and gt.ndim == 1 and qt.numel() and gt.numel():
        num_classes = int(max(qt.max(), gt.max())) + 1
    ql = check_multi_labels(qt, q.shape[0], "query_labels", "query_feats", sq, num_classes)
    gl = check_multi_labels(gt, g.shape[0], "gallery_labels", "gallery_feats", sg, num_classes)
    if ql.shape[1] != gl.shape[1]:
        raise ValueError(
            f"label widths differ: query_labels has {ql.shape[1]} classes but gallery_labels has "
            f"{gl.shape[1]}"
        )
    dev, dtype, fill, rows = o.ranking(q, g, normalize)
    ql_d, gl_d = ql.to(dev), gl.to(dev)
    if bool((ql_d.sum(1) == 1).all()) and bool((gl_d.sum(1) == 1).all()):
        relevant, _ = relevance.class_relevance(ql_d.argmax(1), gl_d.argmax(1))  # one label each: classes
    else:
        gl_t = gl_d.T.contiguous()
        relevant = relevance.mask_relevance(lambda idx: (ql_d.index_select(0, idx) @ gl_t) > 0)
    chunk = keys.even_chunk(q.shape[0], rows)
    queries = aggregate.shard(torch.arange(q.shape[0], device=dev), o.query_shard, chunk)
    per, tot = engine.run(
        fill, queries, g.shape[0], relevant, dtype, map_ks, p_ks, "standard", "hashing", chunk, dev
    )
    full = aggregate.full({**per, "n_rel": tot}, queries, q.shape[0], o.reduce_fn)
    out: dict[str, float] = {name: aggregate.exact_mean(v) for name, v in zip(per, full)}
    out["num_queries"] = int(q.shape[0])
    out["num_queries_no_relevant"] = int((full[-1] == 0).sum())
    return (out, aggregate.mean_per_query(dict(zip(per, full)), full[-1])) if o.per_query else out


def topk_neighbors(
    query_feats: Any,
    gallery_feats: Any,
    k: int,
    metric: str = "l2",
    normalize: bool = True,
    chunk_size: int | None = None,
    memory_budget_mb: float = 512,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest gallery items of each query: ``(scores, indices)``, both ``Q × min(k, N)``, CPU.

    Same ranking and tie rule as the metrics (ties → lowest gallery index first). ``scores`` are
    Euclidean distances (``metric="l2"``, ascending) or inner products (``metric="ip"``, descending).
    """
    check_choice(metric, METRICS, "metric")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or int(k) <= 0:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    q, g = check_pair(query_feats, gallery_feats, None, None)
    q, g, exact = keys.prepare(q.to(g.device), g, normalize)
    fill = keys.distance_fill(q, g, metric, normalize and not exact)
    n_gallery = g.shape[0]
    kk = min(int(k), n_gallery)
    chunk = min(keys.chunk_rows(n_gallery, chunk_size, memory_budget_mb), q.shape[0])
    buf = torch.empty(chunk * n_gallery, device=g.device, dtype=q.dtype)
    all_d, all_i = [], []
    for start in range(0, q.shape[0], chunk):
        idx = torch.arange(start, min(start + chunk, q.shape[0]), device=g.device)
        kmat = buf[: idx.numel() * n_gallery].view(idx.numel(), n_gallery)
        fill(idx, kmat)
        kd, ind = engine.topk_keys(kmat, kk)
        qc = keys.query_rows(q, idx, normalize and not exact)
        dd = keys.key_to_distance(kd, (qc * qc).sum(1), metric)
        all_d.append(dd.to(torch.float32).cpu())
        all_i.append(ind.cpu())
    return torch.cat(all_d), torch.cat(all_i)
