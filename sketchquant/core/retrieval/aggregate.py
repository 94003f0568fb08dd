"""From per-query values to reported numbers: query shards, their exact reduction, SAKE's class means."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .checks import check_query_shard

Reduce = Callable[[torch.Tensor], torch.Tensor]


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


def sbir_aggregate(per: dict[str, torch.Tensor], tot: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    keep = tot.cpu() > 0
    out: dict[str, float] = {}
    lab = labels.cpu()[keep]
    order = torch.argsort(lab, stable=True)  # the queries class by class: one split, not a mask per class
    counts = torch.unique_consecutive(lab.index_select(0, order), return_counts=True)[1].tolist()
    for name, v in per.items():
        v = v.cpu()[keep]
        if v.numel() == 0:
            out[name] = float("nan")
            out[name + "_micro"] = float("nan")
            continue
        class_means = [exact_mean(c) for c in v.index_select(0, order).split(counts)]
        out[name] = math.fsum(class_means) / len(class_means)
        out[name + "_micro"] = exact_mean(v)
    out["num_queries"] = int(labels.numel())
    out["num_queries_no_relevant"] = int((~keep).sum())
    return out
