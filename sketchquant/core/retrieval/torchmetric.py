"""The stateful retrieval metric: a thin :class:`torchmetrics.Metric` over :mod:`.metrics`.

``update(feats, labels, domain, index)`` keeps batches in list states that torchmetrics concatenates
across processes (``dist_reduce_fx="cat"``); ``compute()`` then drops the duplicate samples a
``DistributedSampler`` adds (same ``index``), orders everything by sample index (so the result does not
depend on the number of processes), splits queries (``domain == QUERY``) from the gallery
(``domain == GALLERY``) and calls :func:`.metrics.sbir_metrics` or :func:`.metrics.hashing_metrics`.

Under ``torch.distributed`` every process then ranks only its share of the queries against the whole
gathered gallery (``query_shard``) and the per-query values are summed over the processes
(:func:`all_reduce_sum`): N processes take ~1/N of the ranking time and return exactly the one-process
numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from sketchquant.core.batch import GALLERY, QUERY

from .checks import to_tensor
from .protocols import get_protocol

__all__ = ["RetrievalMetric", "all_reduce_sum", "broadcast_from_zero", "dedup_by_index", "distributed_shard"]


def distributed_shard() -> tuple[int, int] | None:
    """``(rank, world)`` under an initialised ``torch.distributed`` with more than one process, else None."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
        if world > 1:
            return torch.distributed.get_rank(), world
    return None


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all processes (on the backend's device: CUDA for NCCL), returned on ``t``'s device."""
    dev = t.device
    if torch.distributed.get_backend() == "nccl":
        t = t.to(torch.device("cuda", torch.cuda.current_device()))
    t = t.contiguous()
    torch.distributed.all_reduce(t)
    return t.to(dev)


def broadcast_from_zero(a: np.ndarray) -> np.ndarray:
    """Rank 0's copy of ``a`` (same shape and dtype on every process) under ``torch.distributed``."""
    if distributed_shard() is None:
        return a
    t = torch.from_numpy(np.ascontiguousarray(a))
    if torch.distributed.get_backend() == "nccl":
        t = t.to(torch.device("cuda", torch.cuda.current_device()))
    torch.distributed.broadcast(t, 0)
    return t.cpu().numpy()


def dedup_by_index(index: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(index, *tensors)`` sorted by sample index, keeping the first occurrence of every index."""
    order = torch.argsort(index, stable=True)
    sorted_index = index[order]
    keep = torch.ones_like(sorted_index, dtype=torch.bool)
    keep[1:] = sorted_index[1:] != sorted_index[:-1]
    sel = order[keep]
    return (index[sel], *(t[sel] for t in tensors))


class RetrievalMetric(Metric):
    """Accumulates ``update(feats, labels, domain, index)``; ``compute()`` returns the protocol's dict.

    ``metric_kwargs`` go to :func:`.metrics.sbir_metrics` / :func:`.metrics.hashing_metrics`.
    :meth:`gathered` gives the de-duplicated, index-ordered data (e.g. for pictures)."""

    full_state_update = False
    QUERY = QUERY
    GALLERY = GALLERY

    def __init__(self, protocol: str = "sbir", **metric_kwargs: Any) -> None:
        super().__init__()
        self.protocol = get_protocol(protocol).name
        self.metric_kwargs = metric_kwargs
        for name in ("feats", "labels", "domain", "index"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, feats: Any, labels: Any, domain: Any, index: Any) -> None:
        f = to_tensor(feats, "feats", None)
        y = to_tensor(labels, "labels", None)
        dm = to_tensor(domain, "domain", None).reshape(-1)
        ix = to_tensor(index, "index", None).reshape(-1)
        if f.ndim != 2:
            raise ValueError(f"feats must be B × d, got shape {tuple(f.shape)}")
        for name, t in (("labels", y), ("domain", dm), ("index", ix)):
            if t.shape[0] != f.shape[0]:
                raise ValueError(f"{name} has {t.shape[0]} entries but feats has {f.shape[0]} rows")
        dev = self.device
        self.feats.append(f.to(dev))
        self.labels.append(y.to(dev))
        self.domain.append(dm.to(device=dev, dtype=torch.int64))
        self.index.append(ix.to(device=dev, dtype=torch.int64))

    def gathered(self) -> dict[str, torch.Tensor]:
        """``{"feats", "labels", "domain", "index"}``: every sample once, ordered by sample index."""
        if isinstance(self.feats, list) and not self.feats:
            raise ValueError("RetrievalMetric.compute() called before any update()")
        ix, f, y, dm = dedup_by_index(
            dim_zero_cat(self.index),
            dim_zero_cat(self.feats),
            dim_zero_cat(self.labels),
            dim_zero_cat(self.domain),
        )
        return {"feats": f, "labels": y, "domain": dm, "index": ix}

    def compute(self) -> dict[str, float]:
        data = self.gathered()
        return self.evaluate(data["feats"], data["labels"], data["domain"])

    def evaluate(
        self, feats: torch.Tensor, labels: torch.Tensor, domain: torch.Tensor, per_query: bool = False
    ) -> Any:
        """The protocol's metrics for already gathered, de-duplicated samples (no state involved);
        ``per_query=True``: ``(metrics, PerQuery)``, the queries in sample-index order, as
        :func:`.metrics.sbir_metrics` returns them (the same arrays on every process)."""
        qm, gm = domain == self.QUERY, domain == self.GALLERY
        extra = {"per_query": True} if per_query else {}
        return get_protocol(self.protocol).metrics(
            feats[qm], labels[qm], feats[gm], labels[gm], **self.metric_kwargs, **self.shard_kwargs(), **extra
        )

    @staticmethod
    def shard_kwargs() -> dict[str, Any]:
        """``query_shard`` / ``reduce_fn`` for the functional metrics under ``torch.distributed``."""
        shard = distributed_shard()
        return {} if shard is None else {"query_shard": shard, "reduce_fn": all_reduce_sum}
