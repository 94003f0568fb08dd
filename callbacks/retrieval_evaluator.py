"""FAISS/torch retrieval evaluation after each validation epoch and on test (docs/method.md §C).

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

On test it also keeps every query's value of every logged metric (``last_queries``: the arrays of
:mod:`sketchquant.core.retrieval.per_query`, the same on every rank); when the app has set
``queries_path``, rank 0 writes them there (the app names the file in ``results.json``).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import pytorch_lightning as pl
import torch

from sketchquant.callbacks.config import EvalConfig
from sketchquant.callbacks.retrieval_visuals import draw_pictures
from sketchquant.core.batch import DOMAIN, INDEX, LABEL, PHOTO, SKETCH, FeatureSets
from sketchquant.core.retrieval import per_query
from sketchquant.core.retrieval.protocols import get_protocol
from sketchquant.core.retrieval.prototypes import PROTO, fitted_k, prototype_retrieval_metrics
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


class RetrievalEvaluator(pl.Callback):
    """``config``: the ``eval`` section; ``features``: the method's feature names (from the registry:
    which embedding is logged unnamed, which gallery variants are derived at test, which are codes)."""

    def __init__(self, config: EvalConfig, features: FeatureSets, run_dir: str | None = None) -> None:
        self.config = config
        self.features = features
        self.protocol = get_protocol(config.protocol)
        self.run_dir = run_dir
        self._metrics: dict[str, RetrievalMetric] = {}
        self.last_metrics: dict[str, float] = {}
        self._told_no_val_gallery = False  # said once: validation without queries or gallery
        self.last_data: dict[str, torch.Tensor] = {}
        #: where rank 0 writes the test's per-query file (set by the app before testing; None: not written)
        self.queries_path: str | None = None
        self.last_queries: dict[str, Any] = {}  # the per-query file's arrays of the last test
        self._per_query: dict[str, Any] = {}  # feature set -> (logged prefix, PerQuery), test only
        self._chance: list[str] = []  # the logged chance-level names of that test

    # ---------------------------------------------------------------------------------------------
    # collection

    def _reset(self) -> None:
        self._metrics = {}

    def _new_metric(self) -> RetrievalMetric:
        return RetrievalMetric(self.protocol.name, **self._kwargs())

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
            self._keep_queries(trainer)

    # ---------------------------------------------------------------------------------------------
    # evaluation

    def _kwargs(self) -> dict:
        c = self.config
        kw = dict(
            map_at=tuple(c.map_at),
            p_at=tuple(int(k) for k in c.p_at),
            metric=c.metric,
            normalize=c.normalize,
            memory_budget_mb=c.memory_budget_mb,
        )
        if self.protocol.ap_options:
            kw["ap"] = c.ap
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
        c, names = self.config, self.features
        out = self.protocol.chance(labels[qmask], labels[gmask], tuple(c.map_at), stage)
        keep = stage == "test"  # every query's values: test only (validation stays on the lean path)
        self._per_query, self._chance = {}, list(out)
        metric = self._new_metric()
        for key in sorted(k for k in data if k.startswith("emb/")):
            name = key.split("/", 1)[1]
            feats = data[key]
            res = metric.evaluate(feats, labels, domain, per_query=keep)
            if keep:
                res, self._per_query[name] = res[0], (names.prefix(stage, name), res[1])
            out.update({names.prefix(stage, name) + k: float(v) for k, v in res.items()})
            if stage == "test" and c.prototypes and names.derived and name == names.unnamed:
                k = fitted_k(int(gmask.sum()), c.pq_k, c.pq_min_points)
                derived = prototype_retrieval_metrics(
                    feats[qmask],
                    labels[qmask],
                    feats[gmask],
                    labels[gmask],
                    m=c.pq_m,
                    k=k,
                    max_points_per_centroid=c.pq_max_points_per_centroid,
                    lam=c.fusion_lambda,
                    fusion=c.fusion,
                    variants=names.derived,  # the unnamed one: computed once, above
                    sync_fn=broadcast_from_zero,
                    per_query=True,
                    **{k: v for k, v in self._kwargs().items() if k != "metric"},
                    **metric.shard_kwargs(),
                )
                derived, per = derived
                out[names.prefix(stage, PROTO) + "pq_k"] = float(k)  # the centres per subspace used
                for variant, values in derived.items():
                    out.update({names.prefix(stage, variant) + k: float(v) for k, v in values.items()})
                    self._per_query[variant] = (names.prefix(stage, variant), per[variant])
        return out

    def queries_record(
        self, data: dict[str, torch.Tensor], metrics: dict[str, float], dm: Any = None
    ) -> dict:
        """The per-query file's arrays of the last :meth:`compute` on test (``dm``: the DataModule, for the
        queries' paths and the class names)."""
        qmask, gmask = data[DOMAIN] == SKETCH, data[DOMAIN] == PHOTO
        index = data[INDEX][qmask].cpu().numpy()
        has_paths = dm is not None and hasattr(dm, "path_for_index")
        return per_query.build(
            protocol=self.protocol.name,
            stage="test",
            features=self._per_query,
            chance={name: metrics[name] for name in self._chance},
            logged=metrics,
            query_index=index,
            query_label=data[LABEL][qmask],
            gallery_label=data[LABEL][gmask],
            query_path=[dm.path_for_index(int(i)) if has_paths else "" for i in index],
            class_names=list(getattr(dm, "class_names", None) or []),
            map_at=tuple(self.config.map_at),
        )

    def _keep_queries(self, trainer: pl.Trainer) -> None:
        """After a test: keep the per-query arrays; rank 0 writes them to ``queries_path`` (if set)."""
        if not self._per_query:
            return
        self.last_queries = self.queries_record(self.last_data, self.last_metrics, trainer.datamodule)
        if self.queries_path and trainer.is_global_zero:
            per_query.save(self.queries_path, self.last_queries)

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

        draw_pictures(trainer, data, stage, self.config, self.features, self.run_dir)  # never raises
