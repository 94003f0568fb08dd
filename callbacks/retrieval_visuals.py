"""Pictures of a retrieval evaluation: the retrieval grid (run folder, wandb, TensorBoard) and the wandb
dashboard (precision–recall curves, histograms of method A's codes). Drawn by
:class:`sketchquant.callbacks.retrieval_evaluator.RetrievalEvaluator` on rank zero through
:func:`draw_pictures`.

A picture never stops a run: each part (the grid, its copy in each logger, each curve, each histogram,
the sending of the dashboard) is tried on its own, and a part that fails is a :class:`DashboardWarning`
(also written to ``train.log``) naming the part and the error; the other parts are still drawn."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

from sketchquant.callbacks.config import EvalConfig
from sketchquant.core.batch import DOMAIN, INDEX, LABEL, PHOTO, SKETCH, FeatureSets
from sketchquant.core.io import atomic_save_image
from sketchquant.core.retrieval.curves import precision_recall_curve
from sketchquant.core.retrieval.grid import retrieval_grid
from sketchquant.core.retrieval.metrics import topk_neighbors

__all__ = ["DashboardWarning", "draw_pictures", "log_dashboard", "log_grid"]

log = logging.getLogger(__name__)


class DashboardWarning(UserWarning):
    """A picture or a dashboard entry could not be drawn or sent; the run goes on."""


def _warn(what: str, err: BaseException) -> None:
    msg = f"{what} skipped: {type(err).__name__}: {err}"
    warnings.warn(msg, DashboardWarning, stacklevel=3)
    log.warning(msg)


def _attempt(what: str, fn: Callable[[], Any]) -> Any:
    """``fn()``, or ``None`` after a :class:`DashboardWarning` naming ``what`` if it raises."""
    try:
        return fn()
    except Exception as err:  # a picture must never stop a run
        _warn(what, err)
        return None


def draw_pictures(
    trainer: pl.Trainer,
    data: dict[str, torch.Tensor],
    stage: str,
    config: EvalConfig,
    features: FeatureSets,
    run_dir: str | None,
) -> None:
    """Everything the evaluation draws for ``stage`` (rank zero only): the retrieval grid when
    ``config.grid``, and the wandb dashboard when a :class:`WandbLogger` is attached."""
    if config.grid:
        _attempt(
            f"{stage} retrieval grid",
            lambda: log_grid(
                trainer,
                data,
                stage,
                key=f"emb/{features.unnamed or features.embeddings[0]}",
                metric=config.metric,
                normalize=config.normalize,
                queries=config.grid_queries,
                topk=config.grid_topk,
                run_dir=run_dir,
            ),
        )
    if any(isinstance(lg, WandbLogger) for lg in trainer.loggers):
        _attempt(
            f"{stage} wandb dashboard",
            lambda: log_dashboard(trainer, data, stage, config.normalize, codes=features.codes),
        )


def _embedding_keys(data: dict[str, torch.Tensor]) -> list[str]:
    return sorted(k for k in data if k.startswith("emb/"))


def log_dashboard(
    trainer: pl.Trainer,
    data: dict[str, torch.Tensor],
    stage: str,
    normalize: bool,
    codes: Sequence[str] = (),
) -> None:
    """wandb only: a precision–recall curve per embedding (``<stage>/<name>/pr_curve``, a line plot of
    the table ``<stage>/<name>/pr_curve_table``), and for the embeddings named in ``codes`` (integer
    codes: method A's) a histogram of the values (``<stage>/<name>/histogram``) and the fraction of zeros
    (``<stage>/<name>/zero_fraction``). Each entry that cannot be made is a :class:`DashboardWarning`;
    the others are sent."""
    import wandb  # lazy: only with a WandbLogger (which has imported it)

    logger = next(lg for lg in trainer.loggers if isinstance(lg, WandbLogger))
    domain, labels = data[DOMAIN].cpu(), data[LABEL].cpu()
    qmask, gmask = domain == SKETCH, domain == PHOTO
    payload: dict[str, Any] = {}
    for key in _embedding_keys(data):
        name = key.split("/", 1)[1]
        feats = data[key].cpu()

        def curve(feats: torch.Tensor = feats, name: str = name) -> Any:
            recall, precision = precision_recall_curve(
                feats[qmask], labels[qmask], feats[gmask], labels[gmask], normalize=normalize
            )
            table = wandb.Table(
                data=[[float(r), float(p)] for r, p in zip(recall, precision)],
                columns=["recall", "precision"],
            )
            return wandb.plot.line(table, "recall", "precision", title=f"{stage} {name}: precision-recall")

        plot = _attempt(f"wandb {stage}/{name}/pr_curve", curve)
        if plot is not None:
            payload[f"{stage}/{name}/pr_curve"] = plot
        if name in codes:
            values = feats.numpy()
            hist = _attempt(
                f"wandb {stage}/{name}/histogram", lambda v=values: wandb.Histogram(v.ravel(), num_bins=64)
            )
            if hist is not None:
                payload[f"{stage}/{name}/histogram"] = hist
            zeros = _attempt(f"wandb {stage}/{name}/zero_fraction", lambda v=values: float((v == 0).mean()))
            if zeros is not None:
                payload[f"{stage}/{name}/zero_fraction"] = zeros
    if not payload:
        return
    payload["trainer/global_step"] = trainer.global_step
    _attempt(
        f"sending {', '.join(k for k in payload if k != 'trainer/global_step')} to wandb",
        lambda: logger.experiment.log(payload),
    )


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
    ``key`` (``emb/<name>``), relevant ones marked; saved as ``<run_dir>/grids/<stage>-epoch<NNN>.png``
    and sent to wandb / TensorBoard (``<stage>/retrieval_grid``; a logger that fails is a
    :class:`DashboardWarning`, the others still get it)."""
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
    name = f"{stage}/retrieval_grid"
    if run_dir:
        path = Path(run_dir) / "grids" / f"{stage}-epoch{trainer.current_epoch:03d}.png"
        _attempt(f"writing {path}", lambda: atomic_save_image(image, path))
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            _attempt(
                f"wandb {name}",
                lambda lg=logger: lg.log_image(key=name, images=[image], step=trainer.global_step),
            )
        elif isinstance(logger, TensorBoardLogger):
            arr = np.asarray(image).transpose(2, 0, 1)
            _attempt(
                f"TensorBoard {name}",
                lambda lg=logger, a=arr: lg.experiment.add_image(name, a, global_step=trainer.global_step),
            )
