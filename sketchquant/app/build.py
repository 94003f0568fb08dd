"""From a checked config to the objects of a run: DataModule, LightningModule, callbacks, Trainer.

Which classes and which method-specific callbacks come from the method registry
(:mod:`sketchquant.app.methods`); this module only wires them together.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, RichProgressBar

from sketchquant.app.loggers import build_loggers
from sketchquant.app.methods import method_of
from sketchquant.callbacks.atomic_checkpoint import AtomicCheckpointIO
from sketchquant.callbacks.epoch_seed import EpochSeed
from sketchquant.callbacks.epoch_summary import EpochSummary
from sketchquant.callbacks.exact_resume import ExactResume
from sketchquant.callbacks.last_checkpoint import LastCheckpoint
from sketchquant.callbacks.nan_guard import NaNGuard
from sketchquant.callbacks.retrieval_evaluator import RetrievalEvaluator
from sketchquant.core.config import as_kwargs
from sketchquant.core.lazy import load_object
from sketchquant.datamodules.transforms import image_settings

__all__ = [
    "datamodule_kwargs",
    "build_datamodule",
    "module_kwargs",
    "build_module",
    "method_callbacks",
    "build_callbacks",
    "build_trainer",
]


def datamodule_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """The data section as constructor arguments; image size, mean and std the config leaves empty come
    from the backbone's timm data config."""
    return image_settings(as_kwargs(cfg.data, drop=("kind",)), cfg.model.backbone)


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    return method_of(cfg).load("datamodule")(**datamodule_kwargs(cfg))


def module_kwargs(cfg: DictConfig, datamodule: Any) -> dict[str, Any]:
    """Constructor arguments of ``cfg``'s LightningModule: the model section as its dataclass, the data
    facts the method reads from ``datamodule`` and ``max_epochs`` for the schedule."""
    return {
        "config": OmegaConf.to_object(cfg.model),
        **method_of(cfg).data_facts(cfg, datamodule),
        "max_epochs": cfg.trainer.max_epochs,
    }


def build_module(cfg: DictConfig, datamodule: Any, **extra: Any) -> pl.LightningModule:
    """The method's LightningModule; ``datamodule`` needs only the data facts the method reads (class
    count, multi-label, image size), so a set-up DataModule or a plain namespace both work. ``extra``
    goes to the constructor (``teacher=False`` for evaluation)."""
    return method_of(cfg).load("module")(**module_kwargs(cfg, datamodule), **extra)


def method_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    """The callbacks only ``cfg``'s method uses, each built from its model config section (if any)."""
    out = []
    for path, key in method_of(cfg).callbacks:
        cls = load_object(path)
        out.append(cls(OmegaConf.to_object(cfg.model[key])) if key else cls())
    return out


def build_callbacks(cfg: DictConfig, run_dir: Path, *, progress_bar: bool) -> list[pl.Callback]:
    cbs: list[pl.Callback] = [
        NaNGuard(),
        EpochSeed(cfg.seed),
        ExactResume(),  # before LearningRateMonitor: the sampler and sums are restored before any logging
        ModelCheckpoint(  # first ModelCheckpoint = trainer.checkpoint_callback: the best by the monitor
            dirpath=run_dir / "checkpoints",
            filename="best-epoch{epoch:02d}",
            monitor=cfg.monitor,
            mode=cfg.monitor_mode,
            save_top_k=cfg.save_top_k,
            save_last=False,
            auto_insert_metric_name=False,
        ),
        # last.ckpt after EVERY epoch (Lightning's save_last only refreshes it when a best one is saved)
        ModelCheckpoint(
            dirpath=run_dir / "checkpoints",
            filename="last",
            monitor=None,
            save_top_k=1,
            enable_version_counter=False,
        ),
        # last.ckpt also inside epochs (checkpoint.every_n_steps / every_n_minutes) and on SIGTERM / SIGUSR1
        LastCheckpoint(
            run_dir / "checkpoints",
            every_n_steps=cfg.checkpoint.every_n_steps,
            every_n_minutes=cfg.checkpoint.every_n_minutes,
        ),
        RetrievalEvaluator(OmegaConf.to_object(cfg.eval), method_of(cfg).features, run_dir=str(run_dir)),
        LearningRateMonitor(logging_interval="step"),
        EpochSummary(echo=not progress_bar),
        *method_callbacks(cfg),
    ]
    if cfg.early_stop_patience is not None:
        cbs.append(EarlyStopping(cfg.monitor, mode=cfg.monitor_mode, patience=int(cfg.early_stop_patience)))
    if progress_bar:
        cbs.append(RichProgressBar())
    return cbs


def _plugins(cfg: DictConfig) -> list:
    keep = ("last.ckpt",) if cfg.checkpoint.keep_previous else ()
    plugins: list = [AtomicCheckpointIO(keep_previous=keep)]
    if SLURMEnvironment.detect():
        # LastCheckpoint handles SIGUSR1 (checkpoint at the end of a batch, requeue, stop); Lightning's own
        # handler would save from inside the signal handler, mid-step, into an hpc_ckpt_*.ckpt
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return plugins


#: DDP strategies → the same with ``find_unused_parameters=True`` (``model.head_warmup_epochs``)
DDP_UNUSED = {name: f"{name}_find_unused_parameters_true" for name in ("ddp", "ddp_spawn", "ddp_fork")}


def build_trainer(cfg: DictConfig, run_dir: Path, resuming: bool = False, **extra: Any) -> pl.Trainer:
    """``resuming``: the run continues from a checkpoint (``metrics.csv`` drops the rows logged after it)."""
    trainer_kwargs = as_kwargs(cfg.trainer)
    strategy = trainer_kwargs.get("strategy")
    if strategy in DDP_UNUSED and int(cfg.model.get("head_warmup_epochs", 0) or 0) > 0:
        # the warm-up epochs send no gradient into trunk and embedding: DDP must expect unused parameters
        trainer_kwargs["strategy"] = DDP_UNUSED[strategy]
    progress_bar = bool(trainer_kwargs.pop("enable_progress_bar")) and sys.stdout.isatty()
    kwargs = dict(
        default_root_dir=str(run_dir),
        callbacks=build_callbacks(cfg, run_dir, progress_bar=progress_bar),
        logger=build_loggers(cfg, run_dir, resuming=resuming),
        enable_progress_bar=progress_bar,
        plugins=_plugins(cfg),
        use_distributed_sampler=method_of(cfg).use_distributed_sampler,
        **trainer_kwargs,
    )
    kwargs.update(extra)
    return pl.Trainer(**kwargs)
