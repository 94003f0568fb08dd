"""What a Lightning checkpoint does not carry, so that a resumed run continues exactly like a run that was
never stopped — from an end-of-epoch ``last.ckpt`` and from one written inside an epoch.

1. **Data order.** Lightning creates the training DataLoader iterator (and, with ``num_workers > 0``, lets
   the workers prefetch) *before* it sets the resumed epoch on the sampler, so the first epoch after a
   resume used the sampler's epoch 0: epoch 0's order and epoch 0's augmentation tags. At
   ``on_train_start`` the sampler gets the epoch Lightning is about to run and, inside an epoch, the
   number of samples already trained on (:meth:`skip_next` of :class:`sketchquant.datamodules.common.ResumableSampler`),
   and the iterator is created again.
2. **Epoch metrics.** The sums behind every ``self.log(..., on_epoch=True)`` value (Lightning's result
   collection) and the states of the module's torchmetrics objects (``train_acc``) of the interrupted
   epoch are saved in the checkpoint and added back after the first batch of the resumed epoch, so
   ``train/loss_epoch`` and ``train/acc`` of that epoch average over all of its batches, as in a straight run.

3. **The row logged right after the checkpoint.** Lightning writes a checkpoint at the end of a batch or
   epoch and logs that step's (or epoch's) row just *after* it; a kill in between lost the row for good
   (the resumed run starts after it). The checkpoint carries that row, and a resumed run hands it to
   loggers that have ``resume_rows(rows)`` (``metrics.csv``), which add it if it is missing.

Under DDP every rank's sums are gathered into the checkpoint and each rank takes back its own.
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch
from torchmetrics import Metric

log = logging.getLogger(__name__)

__all__ = ["ExactResume"]


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, list):
        return [_clone(v) for v in value]
    return value


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    return value


def _train_results(trainer: pl.Trainer):
    return trainer.fit_loop.epoch_loop._results  # Lightning's result collection of the training epoch


def _train_loaders(trainer: pl.Trainer) -> list:
    loader = trainer.fit_loop._combined_loader
    return list(loader.flattened) if loader is not None else []


def _sampler(dataloader: Any) -> Any:
    batch_sampler = getattr(dataloader, "batch_sampler", None)
    return getattr(batch_sampler, "sampler", None) or getattr(dataloader, "sampler", None)


class ExactResume(pl.Callback):
    """See the module docstring. Put it before callbacks that log at ``on_train_batch_start``."""

    def __init__(self) -> None:
        self._trainer: pl.Trainer | None = None
        self._loaded: dict[str, Any] | None = None  # this rank's saved state, until used
        self._pending: dict[str, dict[str, Any]] | None = None  # result sums to add after the first batch
        self._pending_row_loaded: dict[str, Any] | None = None  # the row logged right after the checkpoint

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    # -- saving ----------------------------------------------------------------------------------------
    def _own_state(self) -> dict[str, Any]:
        trainer = self._trainer
        assert trainer is not None
        results = {}
        for key, item in _train_results(trainer).items():
            if item.is_tensor and item.meta.on_epoch and not item.has_reset:
                results[key] = {name: _clone(getattr(item, name)) for name in item._defaults}
        metrics = {}
        for name, module in trainer.lightning_module.named_modules():
            if isinstance(module, Metric):
                metrics[name] = {
                    "state": {k: _clone(getattr(module, k)) for k in module._defaults},
                    "update_count": int(module._update_count),
                }
        return {"results": results, "metrics": metrics}

    def _pending_row(self) -> dict[str, Any] | None:
        """The row Lightning logs right after a checkpoint written at the end of a batch or of an epoch."""
        trainer = self._trainer
        assert trainer is not None
        connector = trainer._logger_connector
        fit = trainer.fit_loop
        at_epoch_end = connector._first_loop_iter is None
        if not at_epoch_end and (not connector.should_update_logs or fit._should_accumulate()):
            return None  # no step row for this batch
        metrics = {}
        for key, value in connector.metrics["log"].items():
            metrics[key] = float(value.item() if isinstance(value, torch.Tensor) else value)
        if not metrics:
            return None
        metrics.setdefault("epoch", trainer.current_epoch)
        # Lightning logs epoch rows with the step of the epoch's last batch
        step = fit.epoch_loop._batches_that_stepped - (1 if at_epoch_end else 0)
        return {"step": int(step), "metrics": metrics}

    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer
        if trainer is None or trainer.lightning_module is None or not trainer.training:
            return {}
        own = self._own_state()
        states = [own]
        if torch.distributed.is_available() and torch.distributed.is_initialized() and trainer.world_size > 1:
            states = [None] * trainer.world_size
            torch.distributed.all_gather_object(states, own)
        row = self._pending_row()  # on every rank: computing epoch values may sync across ranks
        return {"ranks": states, "pending_row": row if trainer.is_global_zero else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ranks = state_dict.get("ranks") or []
        rank = self._trainer.global_rank if self._trainer is not None else 0
        self._loaded = ranks[rank] if rank < len(ranks) else None
        self._pending_row_loaded = state_dict.get("pending_row")

    # -- resuming --------------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path is None:
            self._loaded = None
            return
        row, self._pending_row_loaded = self._pending_row_loaded, None
        if row:
            for logger in trainer.loggers:
                if hasattr(logger, "resume_rows"):
                    logger.resume_rows([(row["step"], row["metrics"])])
        fit = trainer.fit_loop
        epoch = fit.epoch_progress.current.processed  # what Lightning sets on the samplers for this epoch
        # inside an epoch: the batches the interrupted run trained on (Lightning counts them as fetched)
        done = fit.epoch_loop.batch_progress.current.ready if fit.restarted_mid_epoch else 0
        loaders = _train_loaders(trainer)
        for dataloader in loaders:
            sampler = _sampler(dataloader)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            if done:
                if hasattr(sampler, "skip_next"):
                    sampler.skip_next(done * int(dataloader.batch_size or 1))
                else:
                    log.warning(
                        "resuming inside epoch %d: the training sampler (%s) cannot skip the %d batches "
                        "already trained on, so this epoch's data order differs from the interrupted run",
                        epoch,
                        type(sampler).__name__,
                        done,
                    )
        if loaders and fit._data_fetcher is not None:
            iter(fit._data_fetcher)  # a new iterator from the sampler's resumed position
        if done and self._loaded:
            device = pl_module.device
            for name, module in pl_module.named_modules():
                saved = self._loaded.get("metrics", {}).get(name)
                if isinstance(module, Metric) and saved is not None:
                    for key, value in saved["state"].items():
                        setattr(module, key, _to(value, device))
                    module._update_count = saved["update_count"]
                    module._computed = None
            self._pending = self._loaded.get("results") or None
        self._loaded = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx
    ):
        if not self._pending:
            return
        results = _train_results(trainer)
        missing = []
        for key, saved in self._pending.items():
            item = results.get(key)
            if item is None:
                missing.append(key)
                continue
            if item.meta.is_max_reduction or item.meta.is_min_reduction:
                item.value = item.meta.reduce_fx(saved["value"].to(item.value.device), item.value)
            else:  # mean (value·batch size, batch sizes) and sum: the interrupted part + this batch
                for name, value in saved.items():
                    current = getattr(item, name)
                    setattr(item, name, value.to(current.device) + current)
        if missing:
            log.warning(
                "resume: epoch metrics %s were not logged again; their epoch value is partial", missing
            )
        self._pending = None
