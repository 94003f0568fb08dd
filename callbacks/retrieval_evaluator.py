"""FAISS/torch retrieval evaluation after each validation epoch and on test (SPEC §C).

The module's ``validation_step`` / ``test_step`` return ``{"embeddings": {name: B×d tensor}}``; this callback
feeds them, with the batch's ``label``, ``domain`` and ``index``, to one
:class:`~sketchquant.core.retrieval.torchmetric.RetrievalMetric` per embedding. torchmetrics gathers the
states from every process; the metric drops the duplicates a ``DistributedSampler`` adds (same ``index``),
orders by sample index, splits queries (``domain == SKETCH``) from the gallery (``domain == PHOTO``) and
computes the configured protocol identically on every rank (so every rank logs the same numbers).

Logged names: ``<stage>/<metric>`` for the embedding called ``raw``, ``<stage>/<name>/<metric>`` for the
others (method A: ``codes`` and ``float``); on test with ``prototypes`` (method B) also
``test/proto/<metric>`` and ``test/fused/<metric>``. The sanity check is skipped. Pictures (retrieval
grid, wandb dashboard) are drawn by :mod:`sketchquant.callbacks.retrieval_visuals`.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from sketchquant.core.batch import DOMAIN, INDEX, LABEL, PHOTO, SKETCH
from sketchquant.core.config import choice
from sketchquant.core.retrieval.torchmetric import RetrievalMetric, broadcast_from_zero

log = logging.getLogger(__name__)

# The metrics are computed from the gathered data identically on every rank and logged with
# sync_dist=False on purpose (a mean over ranks is not bit-exact for every world size); Lightning would warn
# once per metric name in every DDP run. Only val/ and test/ names are silenced (losses do sync).
warnings.filterwarnings(
    "ignore",
    message=r"It is recommended to use `self\.log\('(val|test)/.*sync_dist=True",
    category=UserWarning,
)


def hashing_chance(q_labels: torch.Tensor, g_labels: torch.Tensor, map_at, stage: str) -> dict[str, float]:
    """Chance level of the hashing protocol: a random ranking's AP (CalcTopMap) is, in expectation, the
    share of the database relevant to the query (sharing a label), whatever the cut-off; averaged over
    queries. Logged once per cut-off name, e.g. ``test/chance_map_1000``."""
    q = q_labels.float() if q_labels.dim() == 2 else torch.nn.functional.one_hot(q_labels.long()).float()
    g = g_labels.float() if g_labels.dim() == 2 else torch.nn.functional.one_hot(g_labels.long()).float()
    width = max(q.shape[1], g.shape[1])
    q = torch.nn.functional.pad(q, (0, width - q.shape[1]))
    g = torch.nn.functional.pad(g, (0, width - g.shape[1]))
    share = float(((q @ g.T) > 0).float().mean(1).mean())
    return {f"{stage}/chance_map_{k}": share for k in map_at}


class RetrievalEvaluator(pl.Callback):
    def __init__(
        self,
        protocol: str = "sbir",
        map_at=("all", 200),
        p_at=(100, 200),
        ap: str = "voc",
        metric: str = "l2",
        normalize: bool = True,
        memory_budget_mb: int = 512,
        prototypes: bool = True,
        pq_m: int = 2,
        pq_k: int = 32,
        pq_max_points_per_centroid: int | None = None,
        fusion: str = "feature",
        fusion_lambda: float = 0.2,
        grid: bool = True,
        grid_queries: int = 4,
        grid_topk: int = 10,
        run_dir: str | None = None,
    ) -> None:
        self.protocol = protocol
        self.map_at = tuple(map_at)
        self.p_at = tuple(int(k) for k in p_at)
        self.ap = ap
        self.metric = metric
        self.normalize = normalize
        self.memory_budget_mb = memory_budget_mb
        self.prototypes = prototypes
        self.pq_m, self.pq_k = pq_m, pq_k
        self.pq_max_points_per_centroid = pq_max_points_per_centroid
        self.fusion, self.fusion_lambda = fusion, fusion_lambda
        self.grid, self.grid_queries, self.grid_topk = grid, grid_queries, grid_topk
        self.run_dir = run_dir
        self._metrics: dict[str, RetrievalMetric] = {}
        self.last_metrics: dict[str, float] = {}
        self._told_no_val_gallery = False  # said once: validation without queries or gallery
        self.last_data: dict[str, torch.Tensor] = {}

    # ---------------------------------------------------------------------------------------------
    # collection

    def _reset(self) -> None:
        self._metrics = {}

    def _new_metric(self) -> RetrievalMetric:
        return RetrievalMetric(self.protocol, **self._kwargs())

    def _collect(self, outputs: Any, batch: dict, pl_module: pl.LightningModule) -> None:
        if not isinstance(outputs, dict) or "embeddings" not in outputs:
            return
        for name, feats in outputs["embeddings"].items():
            if name not in self._metrics:
                self._metrics[name] = self._new_metric().to(pl_module.device)
            self._metrics[name].update(feats.detach().float(), batch[LABEL], batch[DOMAIN], batch[INDEX])

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._reset()

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._reset()

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if not trainer.sanity_checking:
            self._collect(outputs, batch, pl_module)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(outputs, batch, pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not self._metrics:
            return
        self._evaluate(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        if self._metrics:
            self._evaluate(trainer, pl_module, "test")

    # ---------------------------------------------------------------------------------------------
    # evaluation

    def _kwargs(self) -> dict:
        kw = dict(
            map_at=self.map_at,
            p_at=self.p_at,
            metric=self.metric,
            normalize=self.normalize,
            memory_budget_mb=self.memory_budget_mb,
        )
        if self.protocol == "sbir":
            kw["ap"] = self.ap
        return kw

    def gathered(self) -> dict[str, torch.Tensor]:
        """Every process's samples once, ordered by index: ``emb/<name>``, ``label``, ``domain``, ``index``
        (torchmetrics gathers; every rank calls this, in the same order)."""
        data: dict[str, torch.Tensor] = {}
        for name in sorted(self._metrics):
            with self._metrics[name].sync_context():
                part = self._metrics[name].gathered()
            data[f"emb/{name}"] = part["feats"]
            data[LABEL], data[DOMAIN], data[INDEX] = part["labels"], part["domain"], part["index"]
        return data

    def compute(self, data: dict[str, torch.Tensor], stage: str) -> dict[str, float]:
        """Metrics for gathered, de-duplicated ``data`` (also usable without a Trainer)."""
        domain = data[DOMAIN]
        qmask, gmask = domain == SKETCH, domain == PHOTO
        if stage == "val" and (int(qmask.sum()) == 0 or int(gmask.sum()) == 0):
            if not self._told_no_val_gallery:
                log.info("validation has no sketch queries or no photo gallery: no val retrieval metrics")
                self._told_no_val_gallery = True
            return {}
        if int(qmask.sum()) == 0 or int(gmask.sum()) == 0:
            raise ValueError(
                f"{stage}: retrieval needs queries (domain={SKETCH}) and a gallery (domain={PHOTO}); got "
                f"{int(qmask.sum())} queries and {int(gmask.sum())} gallery items"
            )
        labels = data[LABEL]
        out: dict[str, float] = {}
        if self.protocol == "sbir" and labels.dim() == 1:
            # expected mAP@all of a random ranking ≈ share of relevant items in the gallery (class mean)
            g = labels[gmask]
            shares = [float((g == c).float().mean()) for c in torch.unique(labels[qmask]).tolist()]
            out[f"{stage}/chance_map_all"] = float(np.mean(shares))
        elif self.protocol == "hashing":
            out.update(hashing_chance(labels[qmask], labels[gmask], self.map_at, stage))
        metric = self._new_metric()
        for key in sorted(k for k in data if k.startswith("emb/")):
            name = key.split("/", 1)[1]
            feats = data[key]
            prefix = f"{stage}/" if name == "raw" else f"{stage}/{name}/"
            res = metric.evaluate(feats, labels, domain)
            out.update({prefix + k: float(v) for k, v in res.items()})
            if stage == "test" and self.prototypes and name == "raw":
                from sketchquant.core.retrieval.prototypes import prototype_retrieval_metrics

                both = prototype_retrieval_metrics(
                    feats[qmask],
                    labels[qmask],
                    feats[gmask],
                    labels[gmask],
                    m=self.pq_m,
                    k=self.pq_k,
                    max_points_per_centroid=self.pq_max_points_per_centroid,
                    lam=self.fusion_lambda,
                    fusion=self.fusion,
                    variants=("proto", "fused"),  # raw: computed once, above
                    sync_fn=broadcast_from_zero,
                    **{k: v for k, v in self._kwargs().items() if k != "metric"},
                    **metric.shard_kwargs(),
                )
                for variant in ("proto", "fused"):
                    out.update({f"{stage}/{variant}/{k}": float(v) for k, v in both[variant].items()})
        return out

    def _evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        data = self.gathered()
        self._reset()
        metrics = self.compute(data, stage)
        self.last_metrics, self.last_data = metrics, data
        for key, value in metrics.items():
            # identical on every rank: no sync needed
            pl_module.log(key, value, on_epoch=True, on_step=False, sync_dist=False, rank_zero_only=False)
        if not trainer.is_global_zero:
            return
        from sketchquant.callbacks.retrieval_visuals import log_dashboard, log_grid

        if self.grid:
            try:
                log_grid(
                    trainer,
                    data,
                    stage,
                    metric=self.metric,
                    normalize=self.normalize,
                    queries=self.grid_queries,
                    topk=self.grid_topk,
                    run_dir=self.run_dir,
                )
            except Exception as err:  # a picture must never stop a run
                log.warning("retrieval grid skipped: %s", err)
        if any(type(lg).__name__ == "WandbLogger" for lg in trainer.loggers):
            try:
                log_dashboard(trainer, data, stage, self.normalize)
            except Exception as err:
                log.warning("dashboard plots skipped: %s", err)


@dataclass
class EvalConfig:
    """Retrieval evaluation (SPEC §C) run by :class:`RetrievalEvaluator`."""

    protocol: str = choice("sbir", "hashing")
    map_at: list[Any] = field(default_factory=lambda: ["all", 200])
    p_at: list[int] = field(default_factory=lambda: [100, 200])
    ap: str = choice("voc", "standard")
    metric: str = choice("l2", "ip")
    normalize: bool = True
    memory_budget_mb: int = 512
    prototypes: bool = True  # method B test: also prototype and fused gallery features
    pq_m: int = 2
    pq_k: int = 32
    pq_max_points_per_centroid: int | None = None  # None: k-means on every gallery point
    fusion: str = choice("feature", "distance")
    fusion_lambda: float = 0.2
    grid: bool = True
    grid_queries: int = 4
    grid_topk: int = 10
