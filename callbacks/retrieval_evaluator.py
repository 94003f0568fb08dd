"""FAISS/torch retrieval evaluation after each validation epoch and on test (SPEC §C).

The module's ``validation_step`` / ``test_step`` return ``{"embeddings": {name: B×d tensor}}``; this callback
keeps them with the batch's ``label``, ``domain`` and ``index``, gathers them from every process, drops
the duplicates a ``DistributedSampler`` adds (same ``index``), splits queries (``domain == SKETCH``) from
the gallery (``domain == PHOTO``) and computes the configured protocol identically on every rank (so no
broadcast is needed and every rank logs the same numbers).

Logged names: ``<stage>/<metric>`` for the embedding called ``raw``, ``<stage>/<name>/<metric>`` for the
others (method A: ``codes`` and ``float``); on test with ``prototypes`` (method B) also
``test/proto/<metric>`` and ``test/fused/<metric>``. The sanity check is skipped.
"""

from __future__ import annotations

import logging
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from sketchquant.core.batch import DOMAIN, INDEX, LABEL, PHOTO, SKETCH

log = logging.getLogger(__name__)

# The metrics are computed from the gathered data identically on every rank and logged with
# sync_dist=False on purpose (a mean over ranks is not bit-exact for every world size); Lightning would warn
# once per metric name in every DDP run. Only val/ and test/ names are silenced (losses do sync).
warnings.filterwarnings(
    "ignore",
    message=r"It is recommended to use `self\.log\('(val|test)/.*sync_dist=True",
    category=UserWarning,
)


def gather_and_dedup(
    pl_module: pl.LightningModule, parts: dict[str, list[torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Concatenate local parts, all-gather across processes, keep the first occurrence of every index.

    Every rank holds the same number of samples (the distributed sampler pads), so ``all_gather`` of
    equal shapes is enough. Returns tensors sorted by sample index, so results do not depend on the
    number of processes.
    """
    local = {k: torch.cat(v) if v else torch.empty(0) for k, v in parts.items()}
    world = pl_module.trainer.world_size if pl_module._trainer is not None else 1
    if world > 1:
        gathered = {}
        for key, value in local.items():
            g = pl_module.all_gather(value.to(pl_module.device))  # world × n × ...
            gathered[key] = g.reshape(-1, *value.shape[1:]).cpu()
        local = gathered
    index = local[INDEX].long()
    order = torch.argsort(index, stable=True)
    sorted_index = index[order]
    keep = torch.ones_like(sorted_index, dtype=torch.bool)
    keep[1:] = sorted_index[1:] != sorted_index[:-1]
    sel = order[keep]
    return {k: v[sel] for k, v in local.items()}


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
        self.fusion, self.fusion_lambda = fusion, fusion_lambda
        self.grid, self.grid_queries, self.grid_topk = grid, grid_queries, grid_topk
        self.run_dir = run_dir
        self._parts: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.last_metrics: dict[str, float] = {}
        self.last_data: dict[str, torch.Tensor] = {}

    # ---------------------------------------------------------------------------------------------
    # collection

    def _reset(self) -> None:
        self._parts = defaultdict(list)

    def _collect(self, outputs: Any, batch: dict) -> None:
        if not isinstance(outputs, dict) or "embeddings" not in outputs:
            return
        for name, feats in outputs["embeddings"].items():
            self._parts[f"emb/{name}"].append(feats.detach().float().cpu())
        for key in (LABEL, DOMAIN, INDEX):
            self._parts[key].append(batch[key].detach().cpu())

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._reset()

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._reset()

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if not trainer.sanity_checking:
            self._collect(outputs, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(outputs, batch)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not self._parts:
            return
        self._evaluate(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        if self._parts:
            self._evaluate(trainer, pl_module, "test")

    # ---------------------------------------------------------------------------------------------
    # evaluation

    def _metric_fn(self):
        from sketchquant.core.retrieval.metrics import hashing_metrics, sbir_metrics

        return sbir_metrics if self.protocol == "sbir" else hashing_metrics

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

    def compute(self, data: dict[str, torch.Tensor], stage: str) -> dict[str, float]:
        """Metrics for gathered, de-duplicated ``data`` (also usable without a Trainer)."""
        domain = data[DOMAIN]
        qmask, gmask = domain == SKETCH, domain == PHOTO
        if int(qmask.sum()) == 0 or int(gmask.sum()) == 0:
            raise ValueError(
                f"{stage}: retrieval needs queries (domain={SKETCH}) and a gallery (domain={PHOTO}); got "
                f"{int(qmask.sum())} queries and {int(gmask.sum())} gallery items"
            )
        labels = data[LABEL]
        fn = self._metric_fn()
        out: dict[str, float] = {}
        if self.protocol == "sbir" and labels.dim() == 1:
            # expected mAP@all of a random ranking ≈ share of relevant items in the gallery (class mean)
            g = labels[gmask]
            shares = [float((g == c).float().mean()) for c in torch.unique(labels[qmask]).tolist()]
            out[f"{stage}/chance_map_all"] = float(np.mean(shares))
        for key in sorted(k for k in data if k.startswith("emb/")):
            name = key.split("/", 1)[1]
            feats = data[key]
            prefix = f"{stage}/" if name == "raw" else f"{stage}/{name}/"
            res = fn(feats[qmask], labels[qmask], feats[gmask], labels[gmask], **self._kwargs())
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
                    lam=self.fusion_lambda,
                    fusion=self.fusion,
                    **{k: v for k, v in self._kwargs().items() if k != "metric"},
                )
                for variant in ("proto", "fused"):
                    out.update({f"{stage}/{variant}/{k}": float(v) for k, v in both[variant].items()})
        return out

    def _evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        data = gather_and_dedup(pl_module, self._parts)
        self._reset()
        metrics = self.compute(data, stage)
        self.last_metrics, self.last_data = metrics, data
        for key, value in metrics.items():
            # identical on every rank: no sync needed
            pl_module.log(key, value, on_epoch=True, on_step=False, sync_dist=False, rank_zero_only=False)
        if self.grid and trainer.is_global_zero:
            try:
                self._log_grid(trainer, data, stage)
            except Exception as err:  # a picture must never stop a run
                log.warning("retrieval grid skipped: %s", err)
        if trainer.is_global_zero and any(type(lg).__name__ == "WandbLogger" for lg in trainer.loggers):
            try:
                self._log_dashboard(trainer, data, stage)
            except Exception as err:
                log.warning("dashboard plots skipped: %s", err)

    def _log_dashboard(self, trainer: pl.Trainer, data: dict[str, torch.Tensor], stage: str) -> None:
        """wandb only: a precision–recall curve per embedding and histograms of method A's codes."""
        import wandb

        from sketchquant.core.retrieval.curves import precision_recall_curve

        logger = next(lg for lg in trainer.loggers if type(lg).__name__ == "WandbLogger")
        domain, labels = data[DOMAIN], data[LABEL]
        qmask, gmask = domain == SKETCH, domain == PHOTO
        payload: dict[str, Any] = {}
        for key in sorted(k for k in data if k.startswith("emb/")):
            name = key.split("/", 1)[1]
            feats = data[key]
            recall, precision = precision_recall_curve(
                feats[qmask], labels[qmask], feats[gmask], labels[gmask], normalize=self.normalize
            )
            table = wandb.Table(
                data=[[float(r), float(p)] for r, p in zip(recall, precision)],
                columns=["recall", "precision"],
            )
            payload[f"{stage}/{name}/pr_curve"] = wandb.plot.line(
                table, "recall", "precision", title=f"{stage} {name}: precision-recall"
            )
            if name == "codes":
                codes = feats.numpy()
                payload[f"{stage}/codes/histogram"] = wandb.Histogram(codes.ravel(), num_bins=64)
                payload[f"{stage}/codes/zero_fraction"] = float((codes == 0).mean())
        payload["trainer/global_step"] = trainer.global_step
        logger.experiment.log(payload)

    # ---------------------------------------------------------------------------------------------
    # retrieval grid

    def _log_grid(self, trainer: pl.Trainer, data: dict[str, torch.Tensor], stage: str) -> None:
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "path_for_index"):
            return
        from sketchquant.core.retrieval.grid import retrieval_grid
        from sketchquant.core.retrieval.metrics import topk_neighbors

        key = "emb/raw" if "emb/raw" in data else sorted(k for k in data if k.startswith("emb/"))[0]
        feats, labels, domain, index = data[key], data[LABEL], data[DOMAIN], data[INDEX]
        qsel = torch.nonzero(domain == SKETCH).flatten()
        gsel = torch.nonzero(domain == PHOTO).flatten()
        rng = np.random.default_rng(0)
        pick = qsel[
            torch.as_tensor(rng.choice(len(qsel), size=min(self.grid_queries, len(qsel)), replace=False))
        ]
        _, nn_idx = topk_neighbors(
            feats[pick],
            feats[gsel],
            min(self.grid_topk, len(gsel)),
            metric=self.metric,
            normalize=self.normalize,
        )
        rows = []
        for qi, neighbours in zip(pick.tolist(), torch.as_tensor(nn_idx).tolist()):
            q_label = labels[qi]
            items = []
            for g in neighbours:
                gi = int(gsel[g])
                rel = (
                    bool(torch.equal(labels[gi], q_label))
                    if labels.dim() == 1
                    else bool((labels[gi] * q_label).sum() > 0)
                )
                items.append((dm.path_for_index(int(index[gi])), rel))
            rows.append((dm.path_for_index(int(index[qi])), items))
        image = retrieval_grid(rows)
        epoch = trainer.current_epoch
        if self.run_dir:
            out = Path(self.run_dir) / "grids" / f"{stage}-epoch{epoch:03d}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(f".{out.name}.tmp.png")
            image.save(tmp)
            tmp.replace(out)
        for logger in trainer.loggers:
            kind = type(logger).__name__
            if kind == "WandbLogger":
                logger.log_image(key=f"{stage}/retrieval_grid", images=[image], step=trainer.global_step)
            elif kind == "TensorBoardLogger":
                arr = np.asarray(image).transpose(2, 0, 1)
                logger.experiment.add_image(f"{stage}/retrieval_grid", arr, global_step=trainer.global_step)
