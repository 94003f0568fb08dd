"""Retrieval metrics that match the published evaluation code (SPEC §C), computed in query chunks.

Two protocols, pure functions (torchmetrics style) plus a thin stateful wrapper at the end:

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

How it scales: the query × gallery matrix is never built whole. Queries go in chunks sized from
``memory_budget_mb``; each chunk's distances become unique int64 keys ``(distance, gallery index)``
so that sorting them is exact and tie-safe. For top-k metrics only the ``k_max`` smallest keys per row
are selected (``torch.topk``); for ``k = all`` each row's relevant keys are sorted and their ranks are
found by binary search among the sorted irrelevant keys that are closer than the farthest relevant
item (numpy sorts release the GIL: rows are split over ``torch.get_num_threads()`` threads).

Fast path (``sbir_metrics`` needing every relevant rank — ``k = all`` or a large ``k`` — with the
built-in float distances on the CPU): the gallery is sorted by class (stably) and the queries are taken
in class order, so each query's relevant items are one block of columns; distances come from one
``gallery @ queries.T`` product per chunk; each row's relevant ranks come from a histogram of a
monotone bucketing of its distances plus an exact ``(distance, original index)`` sort of only the items
sharing a bucket with a relevant item (:func:`_class_row_ranks`), and its metrics straight from those
ranks, in numpy on ``torch.get_num_threads()`` threads. Same float32 distances, same tie rule, same
numbers as the generic path (tested against it and against the per-query reference).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "sbir_metrics",
    "sbir_metrics_from_distances",
    "hashing_metrics",
    "topk_neighbors",
    "RetrievalMetric",
    "metric_name",
]

_METRICS = ("l2", "ip")
_APS = ("voc", "standard")
_BYTES_PER_CELL = 40  # distances, keys, masks and temporaries per query × gallery cell


# ----------------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------------
def _label(field: str, source: str | None) -> str:
    return f"{field} ({source})" if source else field


def _to_tensor(x: Any, field: str, source: str | None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise ValueError(f"{_label(field, source)} cannot be read as an array: {exc}") from exc
    if arr.dtype == object:
        raise ValueError(f"{_label(field, source)} must be a numeric array, got dtype object")
    if arr.dtype == np.uint16 or arr.dtype == np.uint32 or arr.dtype == np.uint64:
        arr = arr.astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(arr))


def _check_feats(x: Any, field: str, source: str | None) -> torch.Tensor:
    t = _to_tensor(x, field, source)
    if t.ndim != 2:
        raise ValueError(f"{_label(field, source)} must be a 2-D array (N × d), got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{_label(field, source)} is empty (0 rows)")
    if t.shape[1] == 0:
        raise ValueError(f"{_label(field, source)} has dimension 0")
    if t.is_complex():
        raise ValueError(f"{_label(field, source)} must be real-valued")
    if t.is_floating_point() and not bool(torch.isfinite(t.sum())):
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise ValueError(f"{_label(field, source)} contains {bad} non-finite value(s) (NaN/Inf)")
    return t


def _check_dims(q: torch.Tensor, g: torch.Tensor, names: tuple[str, str]) -> None:
    if q.shape[1] != g.shape[1]:
        raise ValueError(
            f"feature dimensions differ: {names[0]} has dimension {q.shape[1]} "
            f"but {names[1]} has dimension {g.shape[1]}"
        )


def _check_single_labels(y: Any, n: int, field: str, feats_field: str, source: str | None) -> torch.Tensor:
    t = _to_tensor(y, field, source)
    if t.ndim == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim != 1:
        raise ValueError(
            f"{_label(field, source)} must be 1-D class ids for the sbir protocol, got shape {tuple(t.shape)}"
        )
    if t.shape[0] != n:
        raise ValueError(f"{_label(field, source)} has {t.shape[0]} entries but {feats_field} has {n} rows")
    if t.is_floating_point():
        if not bool(torch.isfinite(t).all()) or not bool((t == t.round()).all()):
            raise ValueError(f"{_label(field, source)} must hold integer class ids")
    return t.to(torch.int64)


def _check_multi_labels(
    y: Any, n: int, field: str, feats_field: str, source: str | None, num_classes: int | None = None
) -> torch.Tensor:
    t = _to_tensor(y, field, source)
    if t.ndim == 1:
        if t.is_floating_point() and not bool((t == t.round()).all()):
            raise ValueError(f"{_label(field, source)} must hold integer class ids (1-D) or 0/1 rows (2-D)")
        if t.shape[0] != n:
            raise ValueError(
                f"{_label(field, source)} has {t.shape[0]} entries but {feats_field} has {n} rows"
            )
        t = t.to(torch.int64)
        if t.numel() and int(t.min()) < 0:
            raise ValueError(f"{_label(field, source)} has negative class ids")
        c = num_classes if num_classes is not None else int(t.max()) + 1
        return F.one_hot(t, c).to(torch.float32)
    if t.ndim != 2:
        raise ValueError(
            f"{_label(field, source)} must be N ints or an N×C 0/1 array, got shape {tuple(t.shape)}"
        )
    if t.shape[0] != n:
        raise ValueError(f"{_label(field, source)} has {t.shape[0]} rows but {feats_field} has {n} rows")
    t = t.to(torch.float32)
    if not bool(((t == 0) | (t == 1)).all()):
        raise ValueError(f"{_label(field, source)} must be a 0/1 multi-hot array")
    return t


def _parse_ks(ks: Any, field: str) -> list[int | str]:
    if ks is None:
        return []
    if isinstance(ks, (int, str)):
        ks = [ks]
    out: list[int | str] = []
    for k in ks:
        if isinstance(k, str):
            if k.lower() != "all":
                try:
                    k = int(k)
                except ValueError:
                    raise ValueError(
                        f"{field} contains {k!r}; k must be a positive integer or 'all'"
                    ) from None
            else:
                out.append("all")
                continue
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or int(k) <= 0:
            raise ValueError(f"{field} contains k={k!r}; k must be a positive integer or 'all'")
        out.append(int(k))
    # keep order, drop duplicates
    seen: list[int | str] = []
    for k in out:
        if k not in seen:
            seen.append(k)
    return seen


def metric_name(prefix: str, k: int | str) -> str:
    """``metric_name("map", "all") == "map_all"``, ``metric_name("p", 100) == "p_100"``."""
    return f"{prefix}_{k}"


def _check_choice(value: str, allowed: Sequence[str], field: str) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {field} {value!r}; expected one of {', '.join(map(repr, allowed))}")
    return value


def _sources(source: Sequence[str] | None) -> tuple[str | None, str | None]:
    if source is None:
        return None, None
    if isinstance(source, str):
        return source, source
    s = list(source)
    if len(s) != 2:
        raise ValueError("source must be a pair of names (query, gallery)")
    return s[0], s[1]


# ----------------------------------------------------------------------------------------------------
# distances and keys
# ----------------------------------------------------------------------------------------------------
def _prepare(q: torch.Tensor, g: torch.Tensor, normalize: bool) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Returns (q, g, exact_integer). Integer inputs without normalisation stay exact (float64)."""
    integer = not q.is_floating_point() and not g.is_floating_point() and not normalize
    if integer:
        return q.to(torch.float64), g.to(torch.float64), True
    q = q.to(torch.float32)
    g = g.to(torch.float32)
    if normalize:
        q = F.normalize(q, dim=1)
        g = F.normalize(g, dim=1)
    return q, g, False


def _make_distance_fn(
    q: torch.Tensor, g: torch.Tensor, metric: str
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """``fill(query_indices, out)`` writes the ``n × N`` distances into ``out`` (no new big allocation)."""
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


def _distance_setup(
    q: torch.Tensor, g: torch.Tensor, metric: str, normalize: bool, distance_fn: Callable | None
) -> tuple[torch.device, torch.Tensor, torch.Tensor, bool, Callable]:
    """Where to rank and how: ``(device, q, g, exact, fill)`` with ``q``/``g`` prepared (normalised, or
    integer for exact codes) when the built-in distance is used; a user ``distance_fn`` runs on the CPU."""
    if distance_fn is not None:
        return torch.device("cpu"), q, g, False, _wrap_user_fn(distance_fn, g.shape[0])
    q, g, exact = _prepare(q.to(g.device), g, normalize)
    return g.device, q, g, exact, _make_distance_fn(q, g, metric)


def _wrap_user_fn(distance_fn: Callable[[torch.Tensor], Any], n_gallery: int) -> Callable:
    def fill(idx: torch.Tensor, out: torch.Tensor) -> None:
        d = distance_fn(idx)
        d = d if isinstance(d, torch.Tensor) else torch.as_tensor(np.asarray(d))
        if tuple(d.shape) != (idx.numel(), n_gallery):
            raise ValueError(
                f"distance_fn returned shape {tuple(d.shape)}, expected ({idx.numel()}, {n_gallery})"
            )
        out.copy_(d)

    return fill


class _Workspace:
    """Buffers reused by every chunk: fresh multi-MB tensors per chunk cost more in page faults than
    the arithmetic on them."""

    def __init__(
        self, rows: int, n_gallery: int, device: torch.device, exact_integer: bool, check_finite: bool = True
    ) -> None:
        self.check_finite = check_finite
        self.n_gallery = n_gallery
        self.exact = exact_integer
        self.d = torch.empty(
            rows, n_gallery, device=device, dtype=torch.float64 if exact_integer else torch.float32
        )
        self.t = None if exact_integer else torch.empty(rows, n_gallery, device=device, dtype=torch.int32)
        self.k = torch.empty(rows, n_gallery, device=device, dtype=torch.int64)
        self.offset = torch.arange(n_gallery, device=device, dtype=torch.int64)
        if not exact_integer:
            self.offset += 2**31 * n_gallery

    def keys(self, m: int) -> torch.Tensor:
        """Unique int64 sort keys ``(distance, gallery index)`` of the first ``m`` rows of ``self.d``.

        Sorting the keys orders by distance, ties by gallery index (lowest first); ``key % N`` is the
        gallery index. ``self.d`` is overwritten.
        """
        n_gallery = self.n_gallery
        d, k = self.d[:m], self.k[:m]
        if self.check_finite and not bool(torch.isfinite(d.sum())):
            bad = int((~torch.isfinite(d)).sum())
            if bad:
                raise ValueError(f"distances contain {bad} non-finite value(s) (NaN/Inf)")
        if self.exact:
            d.round_()
            k.copy_(d)
            lo = k.amin(dim=1, keepdim=True)
            self.lo = lo
            span = int((k.amax() - k.amin()).item()) + 1
            if span * n_gallery >= 2**62:
                raise ValueError(
                    "integer distances are too large to rank exactly; pass float features instead"
                )
            k.sub_(lo).mul_(n_gallery).add_(self.offset)
            return k
        t = self.t[:m]
        d.add_(0.0)  # -0.0 → +0.0
        b = d.view(torch.int32)
        torch.bitwise_right_shift(b, 31, out=t)
        t.bitwise_and_(0x7FFFFFFF)
        b.bitwise_xor_(t)  # monotone signed-int order of the IEEE floats
        k.copy_(b)
        k.mul_(n_gallery).add_(self.offset)
        return k

    def decode(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Selected keys (rows of the last :meth:`keys` call) → (distances, gallery indices)."""
        idx = keys % self.n_gallery
        v = keys // self.n_gallery
        if self.exact:
            return (v + self.lo[: keys.shape[0]]).to(torch.float64), idx
        b = (v - 2**31).to(torch.int32)
        b = torch.where(b < 0, b ^ 0x7FFFFFFF, b)
        return b.view(torch.float32), idx


# ----------------------------------------------------------------------------------------------------
# ranks of the relevant items
# ----------------------------------------------------------------------------------------------------
def _ranks_topk(keys: torch.Tensor, rel: torch.Tensor, kmax: int) -> torch.Tensor:
    """Relevance flags of the ``kmax`` best items per row, in rank order (n × kmax bool)."""
    n_gallery = keys.shape[1]
    top = torch.topk(keys, kmax, dim=1, largest=False, sorted=True).values
    return torch.gather(rel, 1, top % n_gallery)


_BUCKET_BITS = 16


def _row_ranks(key: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """1-based ranks (ascending) of the relevant items of one row; exact under the unique-key order.

    rank_j = j + #irrelevant keys below the j-th smallest relevant key. Irrelevant keys beyond the
    last relevant one do not matter. The rest go into ≤ 2^16 buckets of equal key width (a monotone
    map): a histogram gives the count in the buckets below, and only the irrelevant keys that share a
    bucket with a relevant key are sorted (a few thousand instead of the whole row).
    """
    rk = np.sort(key[rel])
    n_rel = rk.size
    base = np.arange(1, n_rel + 1, dtype=np.int64)
    if n_rel == 0:
        return base
    irr = key[~rel]
    irr = irr[irr < rk[-1]]
    if irr.size == 0:
        return base
    kmin = min(int(irr.min()), int(rk[0]))
    shift = max(0, (int(rk[-1]) - kmin).bit_length() - _BUCKET_BITS)
    ib = irr - kmin
    ib >>= shift
    rb = (rk - kmin) >> shift
    nb = int(rb[-1]) + 1
    hist = np.bincount(ib, minlength=nb)
    below = np.cumsum(hist)
    below -= hist
    occupied = np.zeros(nb, dtype=bool)
    occupied[rb] = True
    cand = irr[occupied[ib]]
    cand.sort()
    within = np.searchsorted(cand, rk) - np.searchsorted(cand, kmin + (rb << shift))
    return base + below[rb] + within


def _ranks_full(keys: torch.Tensor, rel: torch.Tensor, pad: int) -> torch.Tensor:
    """Ranks of all relevant items per row, padded with ``pad`` (n × L int64)."""
    k_np = keys.cpu().numpy()
    r_np = rel.cpu().numpy()
    n = k_np.shape[0]
    out: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * n

    def work(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            out[i] = _row_ranks(k_np[i], r_np[i])

    workers = max(1, min(torch.get_num_threads(), n))
    if workers == 1:
        work(0, n)
    else:
        bounds = np.linspace(0, n, workers + 1).astype(int)
        with ThreadPoolExecutor(workers) as ex:
            list(ex.map(lambda b: work(*b), zip(bounds[:-1], bounds[1:])))
    width = max(1, max(len(o) for o in out))
    padded = np.full((n, width), pad, dtype=np.int64)
    for i, o in enumerate(out):
        padded[i, : len(o)] = o
    return torch.from_numpy(padded)


def _flags_to_ranks(flags: torch.Tensor, pad: int) -> torch.Tensor:
    """n × k relevance flags in rank order → padded ascending 1-based ranks of the relevant items."""
    pos = torch.arange(1, flags.shape[1] + 1, dtype=torch.int64, device=flags.device).expand_as(flags)
    ranks = torch.where(flags, pos, torch.full_like(pos, pad))
    return torch.sort(ranks, dim=1).values


# ----------------------------------------------------------------------------------------------------
# per-query metrics from ranks
# ----------------------------------------------------------------------------------------------------
def _per_query(
    ranks: torch.Tensor,
    tot_pos: torch.Tensor,
    n_gallery: int,
    map_at: list,
    p_at: list,
    ap: str,
    protocol: str,
) -> dict[str, torch.Tensor]:
    ranks = ranks.to(torch.float64)
    tot = tot_pos.to(torch.float64)
    j = torch.arange(1, ranks.shape[1] + 1, dtype=torch.float64, device=ranks.device)
    out: dict[str, torch.Tensor] = {}
    for k in map_at:
        kk = n_gallery if k == "all" else min(int(k), n_gallery)
        in_top = ranks <= kk
        prec = torch.where(in_top, j / ranks, torch.zeros_like(ranks))
        hits = in_top.sum(1).to(torch.float64)
        if protocol == "sbir":
            if ap == "voc":
                prec = torch.flip(torch.cummax(torch.flip(prec, [1]), dim=1).values, [1]) * in_top
            denom = torch.clamp(torch.minimum(tot, torch.full_like(tot, kk)), min=1.0)
            out[metric_name("map", k)] = prec.sum(1) / denom
        else:
            out[metric_name("map", k)] = torch.where(
                hits > 0, prec.sum(1) / hits.clamp(min=1.0), torch.zeros_like(hits)
            )
    for k in p_at:
        kk = n_gallery if k == "all" else min(int(k), n_gallery)
        out[metric_name("p", k)] = (ranks <= kk).sum(1).to(torch.float64) / kk
    return out


# ----------------------------------------------------------------------------------------------------
# the engine
# ----------------------------------------------------------------------------------------------------
def _chunk_rows(n_gallery: int, chunk_size: int | None, memory_budget_mb: float) -> int:
    if chunk_size is not None:
        if int(chunk_size) <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        return int(chunk_size)
    if memory_budget_mb <= 0:
        raise ValueError(f"memory_budget_mb must be positive, got {memory_budget_mb}")
    return max(1, int(memory_budget_mb * 2**20 // (_BYTES_PER_CELL * n_gallery)))


def _run(
    fill: Callable[[torch.Tensor, torch.Tensor], None],
    n_query: int,
    n_gallery: int,
    rel_fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    exact_integer: bool,
    map_at: list,
    p_at: list,
    ap: str,
    protocol: str,
    chunk: int,
    device: torch.device,
    check_finite: bool = False,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-query metric values (float64, CPU) and each query's number of relevant gallery items.

    ``rel_fn(query_indices) -> (relevance n × N bool, #relevant per query n)``."""
    finite = [int(k) for k in list(map_at) + list(p_at) if k != "all"]
    full = _needs_full(map_at, p_at, n_gallery)
    kmax = min(max(finite), n_gallery) if finite else n_gallery
    pad = n_gallery + 1
    chunk = min(chunk, n_query)
    ws = _Workspace(chunk, n_gallery, device, exact_integer, check_finite)
    per: dict[str, list[torch.Tensor]] = {}
    tots: list[torch.Tensor] = []
    for start in range(0, n_query, chunk):
        idx = torch.arange(start, min(start + chunk, n_query), device=device)
        m = idx.numel()
        fill(idx, ws.d[:m])
        keys = ws.keys(m)
        rel, tot = rel_fn(idx)
        rel = rel.to(keys.device)
        if full:
            ranks = _ranks_full(keys, rel, pad)
        else:
            ranks = _flags_to_ranks(_ranks_topk(keys, rel, kmax), pad).cpu()
        vals = _per_query(ranks, tot.cpu(), n_gallery, map_at, p_at, ap, protocol)
        for name, v in vals.items():
            per.setdefault(name, []).append(v)
        tots.append(tot.cpu())
    return {k: torch.cat(v) for k, v in per.items()}, torch.cat(tots)


def _sbir_rel_fn(
    ql: torch.Tensor, gl: torch.Tensor
) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    classes, counts = torch.unique(gl, return_counts=True)
    pos = torch.searchsorted(classes, ql).clamp(max=classes.numel() - 1)
    tot_all = torch.where(classes[pos] == ql, counts[pos], torch.zeros_like(pos))

    def rel_fn(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = idx.to(ql.device)
        return ql[idx][:, None] == gl[None, :], tot_all[idx]

    return rel_fn


# ----------------------------------------------------------------------------------------------------
# sbir, k = all, built-in float distances on the CPU: queries grouped by class
# ----------------------------------------------------------------------------------------------------
def _needs_full(map_at: list, p_at: list, n_gallery: int) -> bool:
    ks = list(map_at) + list(p_at)
    finite = [int(k) for k in ks if k != "all"]
    return any(k == "all" for k in ks) or bool(finite and min(max(finite), n_gallery) * 4 >= n_gallery)


def _class_row_ranks(
    d: np.ndarray, blk: tuple[int, int], gidx: np.ndarray, n_buckets: int, t: np.ndarray, b: np.ndarray
) -> np.ndarray:
    """Ascending 1-based ranks of the relevant items ``d[s:e]`` of one distance row (float32, gallery
    sorted by class so that the relevant items are one block); ``gidx`` = original gallery index of
    each column (ties → lowest original index). ``t``/``b``: float32/intp scratch of ``d``'s length.

    Buckets ``b = trunc(clip((d - lo)·scale, -1, n_buckets) + 1)`` are a monotone (non-decreasing) map
    of ``d``: an item in a lower bucket is strictly closer, one in a higher bucket strictly farther,
    whatever the rounding. So, with ``below[b]`` = number of items in the buckets under ``b``::

        rank_j = 1 + below[b_j] + #(items in bucket b_j whose key (distance, original index) < key_j)

    and the last term is found by an exact sort of the few items in buckets that hold a relevant item
    and something else.
    """
    s, e = blk
    n_gallery = d.shape[0]
    r = d[s:e]
    lo = r.min()
    span = float(r.max()) - float(lo)
    scale = np.float32(min((n_buckets - 1) / span, 1e30)) if span > 0 else np.float32(1.0)
    np.subtract(d, lo, out=t)
    np.multiply(t, scale, out=t)
    np.maximum(t, np.float32(-1.0), out=t)
    np.minimum(t, np.float32(n_buckets), out=t)
    t += np.float32(1.0)
    b[...] = t  # truncation toward zero of values in [0, n_buckets + 1]: monotone
    hist = np.bincount(b, minlength=n_buckets + 2)
    rb = b[s:e]
    hr = hist[rb]
    ranks = np.cumsum(hist)
    ranks -= hist
    ranks = ranks[rb]
    ranks += 1
    shared = hr > 1
    if shared.any():
        mark = np.zeros(n_buckets + 2, dtype=bool)
        mark[rb[shared]] = True
        cand = np.flatnonzero(np.take(mark, b))
        bits = (d[cand] + np.float32(0.0)).view(np.int32).astype(np.int64)  # -0.0 → +0.0
        bits = np.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # monotone signed-int order of the floats
        order = np.argsort(bits * n_gallery + gidx[cand])
        sc = cand[order]
        bc = b[sc]  # non-decreasing
        within = np.arange(sc.size) - np.searchsorted(bc, bc, side="left")
        is_rel = (sc >= s) & (sc < e)
        ranks[sc[is_rel] - s] += within[is_rel]
    ranks.sort()
    return ranks


def _row_metrics(
    ranks: np.ndarray, n_rel: int, n_gallery: int, map_at: list, p_at: list, ap: str, out: np.ndarray
) -> None:
    """:func:`_per_query` (sbir) for one query from its ascending ranks, written into ``out``."""
    j = np.arange(1, ranks.size + 1, dtype=np.float64)
    prec_all = j / ranks
    col = 0
    for k in map_at:
        kk = n_gallery if k == "all" else min(int(k), n_gallery)
        cnt = int(np.searchsorted(ranks, kk, side="right"))
        prec = prec_all[:cnt]
        if ap == "voc" and cnt:
            prec = np.maximum.accumulate(prec[::-1])[::-1]
        out[col] = prec.sum() / max(min(n_rel, kk), 1)
        col += 1
    for k in p_at:
        kk = n_gallery if k == "all" else min(int(k), n_gallery)
        out[col] = np.searchsorted(ranks, kk, side="right") / kk
        col += 1


def _sbir_full_by_class(
    q: torch.Tensor,
    ql: torch.Tensor,
    g: torch.Tensor,
    gl: torch.Tensor,
    metric: str,
    map_at: list,
    p_at: list,
    ap: str,
    chunk: int,
    n_buckets: int | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """:func:`_run` for the sbir protocol with every relevant rank (k = all), CPU float32 features.

    The gallery is sorted by class (stably: the original index still breaks ties), so each query's
    relevant items are one contiguous block of columns; queries are taken in class order. Each chunk's
    distances come from one ``gallery @ queries.T`` product (the faster GEMM shape here), transposed
    into query rows; the rows are ranked by :func:`_class_row_ranks` on ``torch.get_num_threads()``
    threads (numpy releases the GIL). Same distance formula, same float32 values, same tie rule as the
    generic path."""
    n_query, n_gallery = q.shape[0], g.shape[0]
    nb = int(n_buckets) if n_buckets is not None else max(16, 2 * n_gallery)
    gl_np = gl.cpu().numpy()
    ql_np = ql.cpu().numpy()
    g_order = np.argsort(gl_np, kind="stable")
    g_classes, g_start, g_count = np.unique(gl_np[g_order], return_index=True, return_counts=True)
    g_sorted = g[torch.from_numpy(g_order)].contiguous()
    g_sq = (g * g).sum(1)[torch.from_numpy(g_order)].numpy() if metric == "l2" else None
    q_sq = (q * q).sum(1).numpy() if metric == "l2" else None
    gidx = g_order.astype(np.int64)

    names = [metric_name("map", k) for k in map_at] + [metric_name("p", k) for k in p_at]
    vals = np.zeros((len(names), n_query), dtype=np.float64)
    # each query's block of relevant (class-sorted) gallery columns; queries without one are skipped
    gi = np.searchsorted(g_classes, ql_np).clip(max=g_classes.size - 1)
    has = g_classes[gi] == ql_np
    blk_s = np.where(has, g_start[gi], 0).astype(np.int64)
    blk_e = np.where(has, g_start[gi] + g_count[gi], 0).astype(np.int64)
    tot = blk_e - blk_s
    q_order = np.flatnonzero(has)
    q_order = q_order[np.argsort(ql_np[q_order], kind="stable")]  # by class: a chunk spans few classes
    chunk = max(1, min(chunk, q_order.size))
    s_buf = torch.empty(n_gallery * chunk, dtype=torch.float32)
    d_buf = torch.empty(chunk * n_gallery, dtype=torch.float32)
    workers = max(1, torch.get_num_threads())
    scratch = [(np.empty(n_gallery, np.float32), np.empty(n_gallery, np.intp)) for _ in range(workers)]
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    try:
        for lo in range(0, q_order.size, chunk):
            rows = q_order[lo : lo + chunk]
            m = rows.size
            s_t = s_buf[: n_gallery * m].view(n_gallery, m)
            torch.mm(g_sorted, q[torch.from_numpy(rows)].T, out=s_t)
            dmat = d_buf[: m * n_gallery].view(m, n_gallery)
            dmat.copy_(s_t.T)
            d_np = dmat.numpy()

            def work(w: int, a: int, z: int, d_np=d_np, rows=rows) -> None:
                t, b = scratch[w]
                for i in range(a, z):
                    row, qi = d_np[i], rows[i]
                    if g_sq is None:
                        np.negative(row, out=row)
                    else:  # same float32 operations, same order, as the generic path
                        row *= np.float32(-2.0)
                        row += g_sq
                        row += q_sq[qi]
                    ranks = _class_row_ranks(row, (int(blk_s[qi]), int(blk_e[qi])), gidx, nb, t, b)
                    _row_metrics(ranks, int(tot[qi]), n_gallery, map_at, p_at, ap, vals[:, qi])

            nw = min(workers, m)
            if pool is None or nw == 1:
                work(0, 0, m)
            else:
                bounds = np.linspace(0, m, nw + 1).astype(int)
                list(pool.map(work, range(nw), bounds[:-1], bounds[1:]))
    finally:
        if pool is not None:
            pool.shutdown()
    return {name: torch.from_numpy(vals[i]) for i, name in enumerate(names)}, torch.from_numpy(tot)


def _sbir_aggregate(
    per: dict[str, torch.Tensor], tot: torch.Tensor, labels: torch.Tensor
) -> dict[str, float]:
    keep = tot > 0
    out: dict[str, float] = {}
    lab = labels.cpu()[keep]
    classes = torch.unique(lab)
    for name, v in per.items():
        v = v[keep]
        if v.numel() == 0:
            out[name] = float("nan")
            out[name + "_micro"] = float("nan")
            continue
        class_means = torch.stack([v[lab == c].mean() for c in classes])
        out[name] = float(class_means.mean())
        out[name + "_micro"] = float(v.mean())
    out["num_queries"] = int(labels.numel())
    out["num_queries_no_relevant"] = int((~keep).sum())
    return out


def sbir_metrics(
    query_feats: Any,
    query_labels: Any,
    gallery_feats: Any,
    gallery_labels: Any,
    *,
    map_at: Iterable[int | str] = ("all",),
    p_at: Iterable[int | str] = (100,),
    ap: str = "voc",
    metric: str = "l2",
    normalize: bool = True,
    distance_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    chunk_size: int | None = None,
    memory_budget_mb: float = 512,
    source: Sequence[str] | None = None,
) -> dict[str, float]:
    """Zero-shot SBIR metrics, SAKE-compatible (see the module docstring for the exact formulas).

    ``query_feats`` ``Q × d`` / ``gallery_feats`` ``N × d`` (numpy or torch, any device), labels 1-D class
    ids. ``distance_fn(query_indices: LongTensor) -> (len(indices) × N)`` distances (lower = closer)
    replaces the built-in distance (features are then only validated; ``metric``/``normalize`` unused).
    ``source`` = (query name, gallery name), e.g. file paths, used in error messages.

    Returns ``map_<k>`` (``map_all`` for k="all") and ``p_<k>`` (class-mean), the same with ``_micro``
    (query mean), ``num_queries`` and ``num_queries_no_relevant``.
    """
    sq, sg = _sources(source)
    _check_choice(ap, _APS, "ap")
    _check_choice(metric, _METRICS, "metric")
    map_ks = _parse_ks(map_at, "map_at")
    p_ks = _parse_ks(p_at, "p_at")
    if not map_ks and not p_ks:
        raise ValueError("nothing to compute: map_at and p_at are both empty")
    q = _check_feats(query_feats, "query_feats", sq)
    g = _check_feats(gallery_feats, "gallery_feats", sg)
    _check_dims(q, g, (_label("query_feats", sq), _label("gallery_feats", sg)))
    ql = _check_single_labels(query_labels, q.shape[0], "query_labels", "query_feats", sq)
    gl = _check_single_labels(gallery_labels, g.shape[0], "gallery_labels", "gallery_feats", sg)
    return _sbir_core(
        q, ql, g, gl, map_ks, p_ks, ap, metric, normalize, distance_fn, chunk_size, memory_budget_mb
    )


def _sbir_core(
    q: torch.Tensor,
    ql: torch.Tensor,
    g: torch.Tensor,
    gl: torch.Tensor,
    map_ks: list,
    p_ks: list,
    ap: str,
    metric: str,
    normalize: bool,
    distance_fn: Callable | None,
    chunk_size: int | None,
    memory_budget_mb: float,
) -> dict[str, float]:
    n_gallery = g.shape[0]
    device, q, g, exact, dist_fn = _distance_setup(q, g, metric, normalize, distance_fn)
    ql_d = ql.to(device)
    gl_d = gl.to(device)

    if distance_fn is None and not exact and device.type == "cpu" and _needs_full(map_ks, p_ks, n_gallery):
        # two float32 query × gallery buffers per chunk (products, distances): 8 bytes a cell
        chunk = _chunk_rows(n_gallery, chunk_size, memory_budget_mb * _BYTES_PER_CELL / 8)
        per, tot = _sbir_full_by_class(q, ql_d, g, gl_d, metric, map_ks, p_ks, ap, chunk)
        return _sbir_aggregate(per, tot, ql)
    chunk = _chunk_rows(n_gallery, chunk_size, memory_budget_mb)
    rel_fn = _sbir_rel_fn(ql_d, gl_d)
    per, tot = _run(
        dist_fn,
        ql.shape[0],
        n_gallery,
        rel_fn,
        exact,
        map_ks,
        p_ks,
        ap,
        "sbir",
        chunk,
        device,
        check_finite=distance_fn is not None,
    )
    return _sbir_aggregate(per, tot, ql)


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
) -> dict[str, float]:
    """:func:`sbir_metrics` from a precomputed ``Q × N`` distance matrix (lower = closer; float64 input
    is ranked as float32). Same names and tie rule."""
    sq, sg = _sources(source)
    _check_choice(ap, _APS, "ap")
    map_ks = _parse_ks(map_at, "map_at")
    p_ks = _parse_ks(p_at, "p_at")
    if not map_ks and not p_ks:
        raise ValueError("nothing to compute: map_at and p_at are both empty")
    d = _check_feats(dist, "dist", None)
    ql = _check_single_labels(query_labels, d.shape[0], "query_labels", "dist", sq)
    gl = _check_single_labels(gallery_labels, d.shape[1], "gallery_labels", "dist (columns)", sg)
    d = d.cpu()
    exact = not d.is_floating_point()
    d = d.to(torch.float64) if exact else d

    n_gallery = d.shape[1]
    dist_fn = _wrap_user_fn(lambda idx: d[idx], n_gallery)

    rel_fn = _sbir_rel_fn(ql, gl)
    chunk = _chunk_rows(n_gallery, chunk_size, memory_budget_mb)
    per, tot = _run(
        dist_fn, d.shape[0], n_gallery, rel_fn, exact, map_ks, p_ks, ap, "sbir", chunk, torch.device("cpu")
    )
    return _sbir_aggregate(per, tot, ql)


def hashing_metrics(
    query_feats: Any,
    query_labels: Any,
    gallery_feats: Any,
    gallery_labels: Any,
    *,
    map_at: Iterable[int | str] = (1000,),
    p_at: Iterable[int | str] = (),
    metric: str = "l2",
    normalize: bool = False,
    distance_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    chunk_size: int | None = None,
    memory_budget_mb: float = 512,
    source: Sequence[str] | None = None,
) -> dict[str, float]:
    """Multi-label retrieval metrics, DeepHash-pytorch ``CalcTopMap``-compatible.

    Labels: ``N × C`` 0/1 multi-hot, or ``N`` ints (turned into one-hot). Relevant = shares ≥ 1 label.
    Default ranking: plain (squared) Euclidean distance of the unnormalised features — for ±1 hash
    codes that is 4 × Hamming distance, the same order as ``CalcHammingDist``; uint8 codes are compared
    exactly. Returns ``map_<k>``, ``p_<k>`` (means over all queries), ``num_queries`` and
    ``num_queries_no_relevant`` (queries with no relevant gallery item; they score 0 and are kept, as in
    ``CalcTopMap``).
    """
    sq, sg = _sources(source)
    _check_choice(metric, _METRICS, "metric")
    map_ks = _parse_ks(map_at, "map_at")
    p_ks = _parse_ks(p_at, "p_at")
    if not map_ks and not p_ks:
        raise ValueError("nothing to compute: map_at and p_at are both empty")
    q = _check_feats(query_feats, "query_feats", sq)
    g = _check_feats(gallery_feats, "gallery_feats", sg)
    _check_dims(q, g, (_label("query_feats", sq), _label("gallery_feats", sg)))
    qt = _to_tensor(query_labels, "query_labels", sq)
    gt = _to_tensor(gallery_labels, "gallery_labels", sg)
    num_classes = None
    if qt.ndim == 1 and gt.ndim == 1 and qt.numel() and gt.numel():
        num_classes = int(max(qt.max(), gt.max())) + 1
    ql = _check_multi_labels(qt, q.shape[0], "query_labels", "query_feats", sq, num_classes)
    gl = _check_multi_labels(gt, g.shape[0], "gallery_labels", "gallery_feats", sg, num_classes)
    if ql.shape[1] != gl.shape[1]:
        raise ValueError(
            f"label widths differ: query_labels has {ql.shape[1]} classes but gallery_labels has "
            f"{gl.shape[1]}"
        )
    n_gallery = g.shape[0]
    device, _, _, exact, dist_fn = _distance_setup(q, g, metric, normalize, distance_fn)
    ql_d = ql.to(device)
    gl_t = gl.to(device).T.contiguous()

    def rel_fn(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rel = (ql_d[idx.to(device)] @ gl_t) > 0
        return rel, rel.view(torch.uint8).sum(1, dtype=torch.int64)

    chunk = _chunk_rows(n_gallery, chunk_size, memory_budget_mb)
    per, tot = _run(
        dist_fn,
        q.shape[0],
        n_gallery,
        rel_fn,
        exact,
        map_ks,
        p_ks,
        "standard",
        "hashing",
        chunk,
        device,
        check_finite=distance_fn is not None,
    )
    out: dict[str, float] = {name: float(v.mean()) for name, v in per.items()}
    out["num_queries"] = int(q.shape[0])
    out["num_queries_no_relevant"] = int((tot == 0).sum())
    return out


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
    _check_choice(metric, _METRICS, "metric")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or int(k) <= 0:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    q = _check_feats(query_feats, "query_feats", None)
    g = _check_feats(gallery_feats, "gallery_feats", None)
    _check_dims(q, g, ("query_feats", "gallery_feats"))
    q, g, exact = _prepare(q.to(g.device), g, normalize)
    dist_fn = _make_distance_fn(q, g, metric)
    n_gallery = g.shape[0]
    kk = min(int(k), n_gallery)
    chunk = _chunk_rows(n_gallery, chunk_size, memory_budget_mb)
    all_d, all_i = [], []
    chunk = min(chunk, q.shape[0])
    ws = _Workspace(chunk, n_gallery, g.device, exact)
    for start in range(0, q.shape[0], chunk):
        idx = torch.arange(start, min(start + chunk, q.shape[0]), device=g.device)
        dist_fn(idx, ws.d[: idx.numel()])
        keys = ws.keys(idx.numel())
        top = torch.topk(keys, kk, dim=1, largest=False, sorted=True).values
        dd, ind = ws.decode(top)
        dd = dd.clamp(min=0).sqrt() if metric == "l2" else -dd
        all_d.append(dd.to(torch.float32).cpu())
        all_i.append(ind.cpu())
    return torch.cat(all_d), torch.cat(all_i)


# ----------------------------------------------------------------------------------------------------
# stateful wrapper
# ----------------------------------------------------------------------------------------------------
class RetrievalMetric:
    """Accumulates ``update(feats, labels, domain, index)`` batches; ``compute()`` drops duplicate
    indices (a ``DistributedSampler`` pads by repeating samples), splits queries (``domain == 1``) from
    the gallery (``domain == 0``) and calls :func:`sbir_metrics` or :func:`hashing_metrics`."""

    QUERY = 1
    GALLERY = 0

    def __init__(self, protocol: str = "sbir", **metric_kwargs: Any) -> None:
        self.protocol = _check_choice(protocol, ("sbir", "hashing"), "protocol")
        self.metric_kwargs = metric_kwargs
        self.reset()

    def reset(self) -> None:
        self._feats: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self._domain: list[torch.Tensor] = []
        self._index: list[torch.Tensor] = []

    def update(self, feats: Any, labels: Any, domain: Any, index: Any) -> None:
        f = _to_tensor(feats, "feats", None).cpu()
        y = _to_tensor(labels, "labels", None).cpu()
        dm = _to_tensor(domain, "domain", None).cpu().reshape(-1)
        ix = _to_tensor(index, "index", None).cpu().reshape(-1)
        if f.ndim != 2:
            raise ValueError(f"feats must be B × d, got shape {tuple(f.shape)}")
        for name, t in (("labels", y), ("domain", dm), ("index", ix)):
            if t.shape[0] != f.shape[0]:
                raise ValueError(f"{name} has {t.shape[0]} entries but feats has {f.shape[0]} rows")
        self._feats.append(f)
        self._labels.append(y)
        self._domain.append(dm.to(torch.int64))
        self._index.append(ix.to(torch.int64))

    def compute(self) -> dict[str, float]:
        if not self._feats:
            raise ValueError("RetrievalMetric.compute() called before any update()")
        f = torch.cat(self._feats)
        y = torch.cat(self._labels)
        dm = torch.cat(self._domain)
        ix = torch.cat(self._index)
        order = torch.argsort(ix, stable=True)
        ix_sorted = ix[order]
        first = torch.ones_like(ix_sorted, dtype=torch.bool)
        first[1:] = ix_sorted[1:] != ix_sorted[:-1]
        keep = order[first]
        f, y, dm = f[keep], y[keep], dm[keep]
        qm = dm == self.QUERY
        gm = dm == self.GALLERY
        fn = sbir_metrics if self.protocol == "sbir" else hashing_metrics
        return fn(f[qm], y[qm], f[gm], y[gm], **self.metric_kwargs)
