"""Keys for the ranking engine: the distances of a chunk of queries to the whole gallery (lower = closer).

Features are prepared once (:func:`prepare`: float32, L2-normalised, or exact float64 for integer codes);
:func:`distance_fill` writes a piece's keys with one matrix product (a :class:`KeyFill`);
:func:`user_fill` wraps a user ``distance_fn``; :func:`chunk_rows` and :func:`even_chunk` size the
chunks from a memory budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

#: bytes of working memory per query × gallery cell of a chunk ranked whole (on a GPU: keys, buckets,
#: counts, temporaries)
BYTES_PER_CELL = 40
#: the same on the CPU, where a chunk is ranked piece by piece (engine.pieces) by one worker per core:
#: the pieces' keys are the memory that grows with the chunk
HOST_BYTES_PER_CELL = 8


def prepare(q: torch.Tensor, g: torch.Tensor, normalize: bool) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``(q, g, exact)``: integer features without normalisation are ranked exactly (float64, exact up
    to 2^53); everything else in float32, the gallery L2-normalised when ``normalize`` — the queries are
    normalised chunk by chunk by :func:`distance_fill` (no second copy of a large query set)."""
    if not q.is_floating_point() and not g.is_floating_point() and not normalize:
        return q.to(torch.float64), g.to(torch.float64), True
    q, g = q.to(torch.float32), g.to(torch.float32)
    return q, F.normalize(g, dim=1) if normalize else g, False


def query_rows(q: torch.Tensor, idx: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Rows ``idx`` of the prepared queries, L2-normalised when ``normalize``."""
    qc = q.index_select(0, idx)
    return F.normalize(qc, dim=1) if normalize else qc


class KeyFill:
    """``fill(query_indices, out)`` writes a piece's ``n × N`` keys (lower = closer) into ``out``.

    A fill may stop short: ``raw(query_indices, out)`` writes ``r`` and the keys are ``offset − r``
    (``offset`` one float32 per gallery item) when ``offset`` is not ``None``: the compiled kernel then
    subtracts as it reads, one pass over the keys fewer (:func:`.native.relevant_ranks`)."""

    def __init__(self, raw: Callable[[torch.Tensor, torch.Tensor], None], offset: torch.Tensor | None = None):
        self.raw, self.offset = raw, offset

    def __call__(self, idx: torch.Tensor, out: torch.Tensor) -> None:
        self.raw(idx, out)
        if self.offset is not None:
            torch.sub(self.offset, out, out=out)


def half_sq_norms(g: torch.Tensor, rows: int = 1024) -> torch.Tensor:
    """``½‖g_i‖²`` of every row, the floats ``(g * g).sum(1) * 0.5`` gives, by blocks of rows through one
    reused temporary: no gallery-sized temporary, and no fresh block-sized one to page-fault each time
    (28 of them cost 10 ms at TU-Berlin scale)."""
    out = torch.empty(g.shape[0], dtype=g.dtype, device=g.device)
    tmp = torch.empty(min(rows, g.shape[0]), g.shape[1], dtype=g.dtype, device=g.device)
    for a in range(0, g.shape[0], rows):
        block = g[a : a + rows]
        sq = tmp[: block.shape[0]]
        torch.mul(block, block, out=sq)
        torch.sum(sq, 1, out=out[a : a + rows])
    return out.mul_(0.5)


def distance_fill(q: torch.Tensor, g: torch.Tensor, metric: str, normalize: bool = False) -> KeyFill:
    """The keys of the built-in distances: ``½‖g‖² − q·g`` for ``"l2"`` (half the squared Euclidean
    distance minus the row's constant ``½‖q‖²``: the same order, one rounding fewer) or ``−q·g`` for
    ``"ip"``: one matrix product per piece (no copy of the gallery); for ``"l2"`` the product is the raw
    fill and ``½‖g‖²`` its offset."""
    half_sq = half_sq_norms(g)
    q_max = 1.0 if normalize else float(torch.linalg.vector_norm(q, dim=1).max())
    g_max = (2.0 * float(half_sq.max())) ** 0.5
    if not math.isfinite((q_max + g_max) ** 2) or (q_max + g_max) ** 2 > 1e37:
        raise ValueError("feature norms are too large: distances would overflow float32")
    g_t = g.T

    def product(idx: torch.Tensor, out: torch.Tensor) -> None:
        torch.mm(query_rows(q, idx, normalize), g_t, out=out)

    if metric == "l2":
        return KeyFill(product, half_sq)

    def negated(idx: torch.Tensor, out: torch.Tensor) -> None:
        product(idx, out)
        out.neg_()

    return KeyFill(negated)


def key_to_distance(keys: torch.Tensor, q_sq: torch.Tensor, metric: str) -> torch.Tensor:
    """:func:`distance_fill` keys back to Euclidean distances (``"l2"``) or inner products (``"ip"``)."""
    if metric == "ip":
        return -keys
    return (keys * 2.0 + q_sq[:, None]).clamp_(min=0).sqrt_()


def user_fill(distance_fn: Callable[[torch.Tensor], Any], n_gallery: int) -> KeyFill:
    """A user ``distance_fn(query_indices) -> n × N`` as a fill (no offset); its values are checked."""

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

    return KeyFill(fill)


def chunk_rows(
    n_gallery: int, chunk_size: int | None, memory_budget_mb: float, device: torch.device | None = None
) -> int:
    """Query rows per chunk: ``chunk_size``, or as many as ``memory_budget_mb`` holds (ranking on
    ``device``; ``None``: a chunk ranked whole, as on a GPU)."""
    if chunk_size is not None:
        if int(chunk_size) <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        return int(chunk_size)
    if memory_budget_mb <= 0:
        raise ValueError(f"memory_budget_mb must be positive, got {memory_budget_mb}")
    per_cell = HOST_BYTES_PER_CELL if device is not None and device.type == "cpu" else BYTES_PER_CELL
    return max(1, int(memory_budget_mb * 2**20 // (per_cell * n_gallery)))


def even_chunk(n_query: int, chunk: int) -> int:
    """Rows per chunk for ``n_query`` queries in chunks of at most ``chunk`` rows: as many chunks as
    ``chunk`` needs, of equal length but the last (shorter by less than the number of chunks), not a
    short remainder ranked alone (2,400 queries in chunks of at most 2,397: two of 1,200, not 2,397 + 3).
    Depends only on the whole query count: every process of a sharded evaluation cuts the same chunks."""
    n_chunks = max(1, -(-n_query // max(1, chunk)))
    return max(1, -(-n_query // n_chunks))
