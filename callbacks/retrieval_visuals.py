"""Pictures of a retrieval evaluation: the retrieval grid (run folder, wandb, TensorBoard) and the wandb
dashboard (precision–recall curves, histograms of method A's codes). Used by
:class:`sketchquant.callbacks.retrieval_evaluator.RetrievalEvaluator` on rank zero; a picture never stops a run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

from sketchquant.core.batch import DOMAIN, INDEX, LABEL, PHOTO, SKETCH
from sketchquant.core.io import atomic_save_image
from sketchquant.core.retrieval.curves import precision_recall_curve
from sketchquant.core.retrieval.grid import retrieval_grid
from sketchquant.core.retrieval.metrics import topk_neighbors

__all__ = ["log_dashboard", "log_grid"]


def _embedding_keys(data: dict[str, torch.Tensor]) -> list[str]:
    return sorted(k for k in data if k.startswith("emb/"))


def log_dashboard(
    trainer: pl.Trainer,
    data: dict[str, torch.Tensor],
    stage: str,
    normalize: bool,
    codes: Sequence[str] = (),
) -> None:
    """wandb only: a precision–recall curve per embedding, and for the embeddings named in ``codes``
    (integer codes: method A's) a histogram of the values and the fraction of zeros."""
    import wandb  # lazy: only with a WandbLogger (which has imported it)

    logger = next(lg for lg in trainer.loggers if isinstance(lg, WandbLogger))
    domain, labels = data[DOMAIN].cpu(), data[LABEL].cpu()
    qmask, gmask = domain == SKETCH, domain == PHOTO
    payload: dict[str, Any] = {}
    for key in _embedding_keys(data):
        name = key.split("/", 1)[1]
        feats = data[key].cpu()
        recall, precision = precision_recall_curve(
            feats[qmask], labels[qmask], feats[gmask], labels[gmask], normalize=normalize
        )
        table = wandb.Table(
            data=[[float(r), float(p)] for r, p in zip(recall, precision)],
            columns=["recall", "precision"],
        )
        payload[f"{stage}/{name}/pr_curve"] = wandb.plot.line(
            table, "recall", "precision", title=f"{stage} {name}: precision-recall"
        )
        if name in codes:
            values = feats.numpy()
            payload[f"{stage}/{name}/histogram"] = wandb.Histogram(values.ravel(), num_bins=64)
            payload[f"{stage}/{name}/zero_fraction"] = float((values == 0).mean())
    payload["trainer/global_step"] = trainer.global_step
    logger.experiment.log(payload)


def log_grid(
    trainer: pl.Trainer,
    data: dict[str, torch.Tensor],
    stage: str,
    *,
    key: str,
    metric: str,
    normalize: bool,
    queries: int,
    topk: int,
    run_dir: str | None,
) -> None:
    """A few random queries (fixed seed) with their ``topk`` nearest gallery items by the embedding
    ``key`` (``emb/<name>``), relevant ones marked;
    saved as ``<run_dir>/grids/<stage>-epoch<NNN>.png`` and sent to wandb / TensorBoard."""
    dm = trainer.datamodule
    if dm is None or not hasattr(dm, "path_for_index"):
        return

    feats, labels, domain, index = (data[k].cpu() for k in (key, LABEL, DOMAIN, INDEX))
    qsel = torch.nonzero(domain == SKETCH).flatten()
    gsel = torch.nonzero(domain == PHOTO).flatten()
    rng = np.random.default_rng(0)
    pick = qsel[torch.as_tensor(rng.choice(len(qsel), size=min(queries, len(qsel)), replace=False))]
    _, nn_idx = topk_neighbors(
        feats[pick], feats[gsel], min(topk, len(gsel)), metric=metric, normalize=normalize
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
    if run_dir:
        atomic_save_image(image, Path(run_dir) / "grids" / f"{stage}-epoch{trainer.current_epoch:03d}.png")
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=f"{stage}/retrieval_grid", images=[image], step=trainer.global_step)
        elif isinstance(logger, TensorBoardLogger):
            arr = np.asarray(image).transpose(2, 0, 1)
            logger.experiment.add_image(f"{stage}/retrieval_grid", arr, global_step=trainer.global_step)
