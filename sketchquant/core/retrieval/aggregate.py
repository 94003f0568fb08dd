"""From per-query values to reported numbers: query shards, their exact reduction, SAKE's class means.

Every reported number is one of four reductions of per-query values (:data:`REDUCTIONS`): the class mean
(SAKE: the mean over each class's queries, then over the classes), the plain mean over the queries, the
number of queries, and the number of queries with no relevant gallery item. Means are exactly rounded
(``math.fsum``), so they do not depend on the order of the queries: :func:`reduce` on the per-query values
of a :class:`PerQuery` gives the reported numbers bit for bit, in any process, from any saved copy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .checks import check_query_shard

Reduce = Callable[[torch.Tensor], torch.Tensor]

#: the reductions from per-query values to a reported number
CLASS_MEAN, MEAN, COUNT, NO_RELEVANT = "class_mean", "mean", "count", "no_relevant"
REDUCTIONS = (CLASS_MEAN, MEAN, COUNT, NO_RELEVANT)
#: the reported counts (no per-query metric behind them)
COUNTS = {"num_queries": COUNT, "num_queries_no_relevant": NO_RELEVANT}


@dataclass(frozen=True)
class PerQuery:
    """The per-query values behind one metric call's reported numbers, queries in input order.

    ``values``: metric name → float64 ``(Q,)``, NaN for a query the protocol leaves out (SBIR: no relevant
    item in the gallery); ``n_relevant``: int64 ``(Q,)`` relevant gallery items per query; ``reported``:
    each returned name → ``(the metric of values it reduces, or "" for a count, the reduction)``."""

    values: dict[str, np.ndarray]
    n_relevant: np.ndarray
    reported: dict[str, tuple[str, str]]

    def numbers(self, labels: Any) -> dict[str, float]:
        """Every reported number, recomputed from the per-query values (``labels``: the queries' class ids,
        used by class means)."""
        lab = np.asarray(labels)
        return {
            name: reduce(kind, self.values.get(metric), lab, self.n_relevant)
            for name, (metric, kind) in self.reported.items()
        }


def shard(queries: torch.Tensor, query_shard: Any, chunk: int) -> torch.Tensor:
    """This process's share of ``queries`` (``query_shard = (rank, world)``): a contiguous run of whole
    chunks, so every chunk is the same matrix product in any number of processes (same rounding)."""
    rank, world = check_query_shard(query_shard)
    n_chunks = -(-queries.numel() // chunk)
    return queries[rank * n_chunks // world * chunk : (rank + 1) * n_chunks // world * chunk]


def full(
    per: dict[str, torch.Tensor], queries: torch.Tensor, n_query: int, reduce_fn: Reduce | None
) -> torch.Tensor:
    """The per-query values as one ``len(per) × n_query`` float64 matrix, zero outside ``queries``, summed
    over the processes by ``reduce_fn`` (exact: every entry is non-zero in one process at most)."""
    full = torch.zeros(len(per), n_query, dtype=torch.float64, device=queries.device)
    for i, v in enumerate(per.values()):
        full[i].index_copy_(0, queries, v.to(torch.float64))
    return reduce_fn(full) if reduce_fn is not None else full


def exact_mean(v: torch.Tensor) -> float:
    """The mean from an exactly rounded sum (``math.fsum``): the same float whatever the thread count
    (torch's reduction splits large tensors by thread, and its rounding moved with it)."""
    return math.fsum(v.double().cpu().tolist()) / v.numel()


def _fsum_mean(v: np.ndarray) -> float:
    return math.fsum(v.tolist()) / v.size


def class_blocks(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(order, counts)``: the queries class by class (stable), and each class's number of queries."""
    order = np.argsort(labels, kind="stable")
    return order, np.unique(labels[order], return_counts=True)[1]


def _class_mean_sorted(v: np.ndarray, counts: np.ndarray) -> float:
    """SAKE's class mean of values already ordered class by class (``counts`` per class)."""
    class_means = [_fsum_mean(c) for c in np.split(v, np.cumsum(counts)[:-1])]
    return math.fsum(class_means) / len(class_means)


def reduce(kind: str, values: np.ndarray | None, labels: np.ndarray, n_relevant: np.ndarray) -> float:
    """One reported number from per-query values (NaN entries left out of the means): ``kind`` one of
    :data:`REDUCTIONS`; ``labels`` 1-D class ids (class means only)."""
    if kind == COUNT:
        return float(len(n_relevant))
    if kind == NO_RELEVANT:
        return float(np.count_nonzero(np.asarray(n_relevant) == 0))
    v = np.asarray(values, dtype=np.float64)
    keep = ~np.isnan(v)
    if not keep.any():
        return float("nan")
    if kind == MEAN:
        return _fsum_mean(v[keep])
    if kind == CLASS_MEAN:
        lab = np.asarray(labels)[keep]
        order, counts = class_blocks(lab)
        return _class_mean_sorted(v[keep][order], counts)
    raise ValueError(f"unknown reduction {kind!r}; expected one of {', '.join(REDUCTIONS)}")


def sbir_aggregate(per: dict[str, torch.Tensor], tot: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    keep = (tot.cpu() > 0).numpy()
    out: dict[str, float] = {}
    order, counts = class_blocks(labels.cpu().numpy()[keep])  # one split for every metric
    for name, v in per.items():
        x = v.cpu().numpy()[keep]
        if x.size == 0:
            out[name] = float("nan")
            out[name + "_micro"] = float("nan")
            continue
        out[name] = _class_mean_sorted(x[order], counts)
        out[name + "_micro"] = _fsum_mean(x)
    out["num_queries"] = int(labels.numel())
    out["num_queries_no_relevant"] = int((~keep).sum())
    return out


def sbir_per_query(per: dict[str, torch.Tensor], tot: torch.Tensor) -> PerQuery:
    """:class:`PerQuery` of :func:`sbir_aggregate`'s numbers (a query with no relevant item: NaN)."""
    n_rel = tot.cpu().numpy().astype(np.int64)
    values = {}
    for name, v in per.items():
        x = v.cpu().numpy().astype(np.float64, copy=True)
        x[n_rel == 0] = np.nan
        values[name] = x
    reported = {}
    for name in per:
        reported[name] = (name, CLASS_MEAN)
        reported[name + "_micro"] = (name, MEAN)
    reported.update({name: ("", kind) for name, kind in COUNTS.items()})
    return PerQuery(values, n_rel, reported)


def mean_per_query(per: dict[str, torch.Tensor], tot: torch.Tensor) -> PerQuery:
    """:class:`PerQuery` of plain means over every query (the hashing protocol: no query left out)."""
    values = {name: v.cpu().numpy().astype(np.float64, copy=True) for name, v in per.items()}
    reported = {name: (name, MEAN) for name in per}
    reported.update({name: ("", kind) for name, kind in COUNTS.items()})
    return PerQuery(values, tot.cpu().numpy().astype(np.int64), reported)
