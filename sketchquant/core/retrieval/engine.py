"""The one ranking engine: exact, tie-safe ranks of the relevant gallery items, query chunk by chunk.

Every metric of :mod:`.metrics` needs, per query, the ascending 1-based ranks of its relevant gallery
items under the order *(distance, gallery index)* — ties broken by the lowest gallery index (docs/method.md §C).
The query × gallery distance matrix is never built whole: queries go in chunks of rows, and for a chunk
(``m × N`` keys, lower = closer) :func:`relevant_ranks` finds those ranks with whole-chunk torch ops on
the keys' device:

- per row, a monotone (non-decreasing) bucketing ``b = clip(key·scale + c, 0, B + 1)`` of the keys,
  with ``scale`` and ``c`` from the row's relevant keys; one ``bincount`` over row-offset buckets gives
  the number of items in the buckets below each relevant item's bucket — those are strictly closer;
- items sharing a bucket with a relevant item are then ordered exactly, by (key, gallery index), with
  one stable sort of only those candidates; ``rank = 1 + #below + #closer in the same bucket``.

Whatever the rounding of ``key·scale + c``, a lower bucket never holds a farther item, so the ranks are
exact for any float or integer-valued keys. :func:`per_query_metrics` turns padded ranks into AP / P@k,
summing in rank order. On the CPU, float32 keys go to the compiled kernel of :mod:`.native` instead: the
same bucketing in one pass per row, then the per-query values from the ranks — the same ranks and the
same bits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from . import native
from .checks import metric_name
from .keys import KeyFill

#: cells ranked at once by the torch ranking on the CPU (a block's temporaries stay in the cache)
BLOCK_CELLS = 2**20
#: cells of a piece, the unit of work on the CPU: one single-threaded matrix product and its ranking.
#: Each product reads the whole gallery, so a piece needs many query rows (a few hundred: 2^24 cells is
#: 310 rows at 54k gallery items) for the product to run at the speed of one big product; far more rows
#: would push its keys out of the cache before the ranking reads them (benchmarks/eval_speed.py).
PIECE_CELLS = 2**24
#: rows of a piece at most: past about 300 rows the product gains nothing, and the larger key buffer
#: costs page faults on first touch (TU-Berlin scale: 2^24 cells would be 599 rows, and slower)
PIECE_ROWS = 320
#: buckets per gallery item: more means fewer items to compare exactly, a larger histogram
BUCKETS_PER_ITEM = 1.0


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
    if L == 0:
        return torch.empty(m, 0, dtype=torch.int64, device=dev)
    n_rel = n_rel.to(dev)
    nb = max(2, int(n_buckets) if n_buckets is not None else int(n * BUCKETS_PER_ITEM))
    nbp = nb + 2
    if m > 1 and m * nbp >= (2**23 if keys.dtype == torch.float32 else 2**52):  # bucket ids exact in floats
        h = m // 2
        top = relevant_ranks(keys[:h], cols[:h], n_rel[:h], nb)
        bottom = relevant_ranks(keys[h:], cols[h:], n_rel[h:], nb)
        return torch.cat([top, bottom])
    valid = torch.arange(L, device=dev)[None, :] < n_rel[:, None]
    kr = keys.gather(1, cols)
    big = torch.finfo(keys.dtype).max
    has = n_rel > 0
    lo = torch.where(has, torch.where(valid, kr, big).amin(1), 0.0).double()
    hi = torch.where(has, torch.where(valid, kr, -big).amax(1), 0.0).double()
    # (nb − 1) buckets over the relevant keys' range; the cap keeps lo·scale well inside the float range
    cap = 2.0**21 / torch.maximum(lo.abs(), hi.abs()).clamp(min=1e-30)
    scale = torch.minimum(torch.where(hi > lo, (nb - 1) / (hi - lo).clamp(min=1e-300), cap), cap)
    row0 = torch.arange(m, device=dev, dtype=torch.float64) * nbp
    shift = (row0 + 1.0 - lo * scale).to(keys.dtype)
    t = torch.addcmul(shift[:, None], keys, scale.to(keys.dtype)[:, None])
    # a monotone map of each row's keys into its own bucket range: lower bucket ⇒ strictly closer
    t.clamp_(min=row0.to(keys.dtype)[:, None], max=(row0 + nb + 1).to(keys.dtype)[:, None])
    b = t.to(torch.int32 if m * nbp < 2**31 else torch.int64)
    del t
    b_flat = b.view(-1)
    hist = _bincount(b_flat, m * nbp)
    csum = hist.cumsum(0)  # every row holds n items: the rows above a bucket's row hold row·n of them
    rb = b.gather(1, cols).view(-1).long()
    h_at = hist.index_select(0, rb)
    ranks = csum.index_select(0, rb) - h_at + 1  # 1 + #items in the buckets below, rows above included
    ranks = ranks.view(m, L) - torch.arange(0, m * n, n, device=dev)[:, None]
    sel = ((h_at > 1).view(m, L) & valid).view(-1).nonzero().squeeze(1)
    if sel.numel():
        rel_flat = torch.div(sel, L, rounding_mode="floor") * n + cols.reshape(-1).index_select(0, sel)
        within = _within_bucket(keys, b_flat, rb.index_select(0, sel), rel_flat, nbp)
        ranks.view(-1).index_add_(0, sel, within)
    ranks = torch.where(valid, ranks, torch.full_like(ranks, n + 1))
    return ranks.sort(dim=1).values


def _host_path(device: torch.device) -> bool:
    """CPU-only speed-ups (worker threads, cache-sized blocks, numpy's bincount); everything else is
    the same device-agnostic torch code on every device."""
    return device.type == "cpu"


def _bincount(x: torch.Tensor, length: int) -> torch.Tensor:
    """``torch.bincount`` (numpy's on the CPU: faster there, same counts)."""
    if _host_path(x.device):
        return torch.from_numpy(np.bincount(x.numpy(), minlength=length))
    return torch.bincount(x, minlength=length)


def _monotone_bits(k: torch.Tensor) -> torch.Tensor:
    """int64 with the order of the float32 values ``k`` (−0.0 = +0.0), non-negative, < 2^32."""
    bits = (k + 0.0).view(torch.int32).long()
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits) + 2**31


def _within_bucket(
    keys: torch.Tensor, b_flat: torch.Tensor, rel_b: torch.Tensor, rel_flat: torch.Tensor, nbp: int
) -> torch.Tensor:
    """For relevant items in shared buckets (bucket ``rel_b``, flat position ``rel_flat``): how many
    items of their bucket come first under (key, column).

    The items of those buckets (the candidates) are found with one gather over the block; each is
    compared with the relevant items of its bucket one layer at a time (the first relevant item of
    every bucket, then the second, …); buckets holding many relevant items (ties) are sorted instead."""
    m, n = keys.shape
    dev = keys.device
    n_sel = rel_b.numel()
    mark = torch.zeros(m * nbp, dtype=torch.bool, device=dev)
    mark.index_fill_(0, rel_b, True)
    pos = mark.index_select(0, b_flat).nonzero().squeeze(1)  # candidates, flat (row, column) order
    order = torch.sort(rel_b, stable=True).indices
    sb = rel_b.index_select(0, order)
    layers = int((torch.arange(n_sel, device=dev) - torch.searchsorted(sb, sb, side="left")).max()) + 1
    if layers > 8:
        return _within_bucket_sorted(keys, b_flat, pos, rel_flat)
    flat_keys = keys.view(-1)
    cb = b_flat.index_select(0, pos).long()
    ck, ccol = flat_keys.index_select(0, pos), pos % n
    # the first relevant item of each candidate's bucket: a table written only where candidates read
    starts = torch.ones(n_sel, dtype=torch.bool, device=dev)
    starts[1:] = sb[1:] != sb[:-1]
    start_idx = starts.nonzero().squeeze(1)
    table = torch.empty(m * nbp, dtype=torch.int64, device=dev)
    table.scatter_(0, sb.index_select(0, start_idx), start_idx)
    first = table.index_select(0, cb)
    rel_sorted = rel_flat.index_select(0, order)
    rk, rcol = flat_keys.index_select(0, rel_sorted), rel_sorted % n
    within = torch.zeros(n_sel, dtype=torch.int64, device=dev)
    for t in range(layers):
        j = first + t
        ok = j < n_sel
        j.clamp_(max=n_sel - 1)
        ok &= sb.index_select(0, j) == cb
        kj = rk.index_select(0, j)
        ok &= (ck < kj) | ((ck == kj) & (ccol < rcol.index_select(0, j)))
        within.index_add_(0, j, ok.long())
    return torch.empty_like(within).scatter_(0, order, within)


def _within_bucket_sorted(
    keys: torch.Tensor, b_flat: torch.Tensor, pos: torch.Tensor, rel_flat: torch.Tensor
) -> torch.Tensor:
    """:func:`_within_bucket` by one stable sort of the candidates ``pos`` by (bucket, key, column)."""
    dev = keys.device
    kc = keys.view(-1).index_select(0, pos)
    bc = b_flat.index_select(0, pos).long()
    if keys.dtype == torch.float32:  # equal keys keep their (row, column) order
        order = torch.sort((bc << 32) | _monotone_bits(kc), stable=True).indices
    else:
        order = torch.sort(kc + 0.0, stable=True).indices
        order = order.index_select(0, torch.sort(bc.index_select(0, order), stable=True).indices)
    sb = bc.index_select(0, order)
    within = torch.arange(sb.numel(), device=dev) - torch.searchsorted(sb, sb, side="left")
    inv = torch.empty_like(order)
    inv.index_copy_(0, order, torch.arange(order.numel(), device=dev))
    return within.index_select(0, inv.index_select(0, torch.searchsorted(pos, rel_flat)))


# ----------------------------------------------------------------------------------------------------
# metrics from ranks
# ----------------------------------------------------------------------------------------------------
def metric_specs(
    n_gallery: int, map_at: list, p_at: list, ap: str, protocol: str
) -> list[tuple[str, int, int]]:
    """``(name, cut-off 1 … N, kind)`` of each metric, in the order of the returned dicts; kinds: 0 the
    VOC AP and 1 the standard AP (SAKE, divided by min(#relevant, k)), 2 the hashing AP (divided by the
    relevant items found), 3 P@k — the numbering of the compiled kernel's ``sq_rank_metrics``."""
    ap_kind = (0 if ap == "voc" else 1) if protocol == "sbir" else 2

    def cut(k: int | str) -> int:
        return n_gallery if k == "all" else min(int(k), n_gallery)

    return [(metric_name("map", k), cut(k), ap_kind) for k in map_at] + [
        (metric_name("p", k), cut(k), 3) for k in p_at
    ]


def per_query_metrics(
    ranks: torch.Tensor,
    n_rel: torch.Tensor,
    n_gallery: int,
    map_at: list,
    p_at: list,
    ap: str,
    protocol: str,
) -> dict[str, torch.Tensor]:
    """Per-query AP@k / P@k (float64) from padded ascending ranks (docs/method.md §C formulas).

    The ranks ascend along a row, so at most ``k`` of them are ≤ k: a finite cut-off reads only the
    first ``k`` columns. The sums run in rank order (``cumsum``), as the compiled kernel's do."""
    ranks = ranks.to(torch.float64)
    tot = n_rel.to(device=ranks.device, dtype=torch.float64)
    j = torch.arange(1, ranks.shape[1] + 1, dtype=torch.float64, device=ranks.device)
    out: dict[str, torch.Tensor] = {}
    for name, kk, kind in metric_specs(n_gallery, map_at, p_at, ap, protocol):
        r = ranks[:, :kk]
        in_top = r <= kk  # a prefix of each row: the ranks ascend
        hits = in_top.sum(1).to(torch.float64)
        if kind == 3:
            out[name] = hits / kk
            continue
        prec = (j[: r.shape[1]] / r).masked_fill_(~in_top, 0.0)
        if kind == 0:  # interpolated: the best precision at this rank or deeper (0 past the top k)
            prec = _reverse_cummax(prec)
        total = prec.cumsum(1)[:, -1] if prec.shape[1] else torch.zeros_like(tot)
        if kind == 2:
            out[name] = torch.where(hits > 0, total / hits.clamp(min=1.0), torch.zeros_like(hits))
        else:
            out[name] = total / torch.clamp(torch.minimum(tot, torch.full_like(tot, kk)), min=1.0)
    return out


def _reverse_cummax(x: torch.Tensor) -> torch.Tensor:
    """``out[:, j] = max(x[:, j:])`` (numpy's accumulate on the CPU: no index output, no copies)."""
    if _host_path(x.device):
        xn = x.numpy()
        out = np.empty_like(xn)
        np.maximum.accumulate(xn[:, ::-1], axis=1, out=out[:, ::-1])
        return torch.from_numpy(out)
    return torch.flip(torch.cummax(torch.flip(x, [1]), dim=1).values, [1])


# ----------------------------------------------------------------------------------------------------
# the chunk loop
# ----------------------------------------------------------------------------------------------------
def pieces(n_query: int, chunk: int, n_gallery: int | None) -> list[tuple[int, int]]:
    """``(start, end)`` query spans, the units of work: every chunk of ``chunk`` rows cut into the fewest
    equal pieces (sizes differing by at most one) of at most :data:`PIECE_CELLS` cells each, an even
    number of them when the chunk has 16 rows or more (two workers then end together even when the
    queries fill one chunk, as at TU-Berlin scale) — on the CPU, ``n_gallery`` given; whole chunks
    otherwise (``None``). The cuts depend only on the chunk's length, and a query shard is whole
    chunks: each piece is the same matrix product, rounded the same, in any number of processes."""
    rows = chunk if n_gallery is None else min(chunk, PIECE_ROWS, max(8, PIECE_CELLS // max(1, n_gallery)))
    out = []
    for a in range(0, n_query, chunk):
        c = min(chunk, n_query - a)
        k = -(-c // rows)
        if n_gallery is not None and c >= 16:
            k += k % 2
        bounds = [a + c * i // k for i in range(k + 1)]
        out += list(zip(bounds[:-1], bounds[1:]))
    return out


def run(
    fill: KeyFill,
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

    ``fill(indices, out)`` writes a piece's keys (the compiled kernel takes ``fill.raw``'s output and
    subtracts ``fill.offset`` itself); ``relevant(indices) -> (cols m × L, n_rel m)``. On the
    CPU, ``torch.get_num_threads()`` workers take the next piece (:func:`pieces`) as they finish one,
    each single-threaded from its matrix product to its metrics (no idle core while one-threaded steps
    run); the torch ranking goes in blocks of about :data:`BLOCK_CELLS` cells so that its temporaries
    stay in the cache."""
    n_query = queries.numel()
    names, cutoffs, kinds = zip(*metric_specs(n_gallery, map_at, p_at, ap, protocol))
    if n_query == 0:
        empty = torch.empty(0, dtype=torch.float64, device=device)
        return {name: empty for name in names}, torch.empty(0, dtype=torch.int64, device=device)
    cpu = _host_path(device)
    use_native = cpu and dtype == torch.float32 and native.available(n_gallery)
    spans = pieces(n_query, max(1, chunk), n_gallery if cpu else None)
    piece = max(e - s for s, e in spans)
    workers = max(1, min(torch.get_num_threads(), len(spans))) if cpu else 1
    block = max(1, BLOCK_CELLS // n_gallery) if cpu else piece
    results: list[Any] = [None] * len(spans)
    todo, lock = iter(range(len(spans))), threading.Lock()

    def work(_: int) -> None:
        if cpu:  # one thread per product: its rounding is then the same whatever the thread count
            torch.set_num_threads(1)
        buf = torch.empty(piece * n_gallery, device=device, dtype=dtype)
        while True:
            with lock:
                ci = next(todo, None)
            if ci is None:
                return
            idx = queries[spans[ci][0] : spans[ci][1]]
            keys = buf[: idx.numel() * n_gallery].view(idx.numel(), n_gallery)
            cols, n_rel = relevant(idx)
            if use_native:  # one pass per row in C, the keys' offset subtracted there (same ranks, values)
                fill.raw(idx, keys)
                ranks = native.relevant_ranks(keys, cols, n_rel, fill.offset)
                results[ci] = (dict(zip(names, native.rank_metrics(ranks, n_rel, cutoffs, kinds).T)), n_rel)
                continue
            fill(idx, keys)
            ranks = torch.cat(
                [
                    relevant_ranks(keys[a : a + block], cols[a : a + block], n_rel[a : a + block])
                    for a in range(0, idx.numel(), block)
                ]
            )
            results[ci] = (per_query_metrics(ranks, n_rel, n_gallery, map_at, p_at, ap, protocol), n_rel)

    if not cpu:
        work(0)
    else:
        threads = torch.get_num_threads()
        try:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(work, range(workers)))
        finally:
            torch.set_num_threads(threads)
    per = {name: torch.cat([r[0][name] for r in results]) for name in results[0][0]}
    return per, torch.cat([r[1] for r in results])


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
