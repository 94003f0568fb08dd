"""Loggers of a run: CSV always (appending, so fit/test in fresh DDP workers and resumed runs continue one
``metrics.csv``), plus wandb (offline unless ``WANDB_MODE=online``) or TensorBoard."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytorch_lightning as pl
from lightning_fabric.loggers.logger import rank_zero_experiment
from omegaconf import DictConfig
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from sketchquant.core.config import to_container


class AppendingExperimentWriter(ExperimentWriter):
    """Lightning's writer deletes an existing ``metrics.csv``. Keep it and add rows: under ddp_spawn/ddp_fork
    fit and test each run in fresh worker processes (a new writer each), and a resumed run continues its
    run folder."""

    def _check_log_dir_exists(self) -> None:
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            header = next(csv.reader(file), [])
        self.metrics_keys = sorted(set(header))
        if header and header != self.metrics_keys:  # appended rows follow the sorted header
            self._rewrite_with_new_header(self.metrics_keys)


class AppendingCSVLogger(CSVLogger):
    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment


def build_loggers(cfg: DictConfig, run_dir: Path) -> list:
    loggers: list = [AppendingCSVLogger(save_dir=str(run_dir), name="", version="")]
    if cfg.logger.name == "wandb":
        # never wait on the network: offline unless the user asked for online (SPEC §E)
        online = os.environ.get("WANDB_MODE") == "online" and cfg.logger.offline is not True
        if not online:
            os.environ["WANDB_MODE"] = "offline"
        loggers.append(
            WandbLogger(
                project=cfg.logger.project,
                entity=cfg.logger.entity,
                group=cfg.logger.group,
                tags=list(cfg.logger.tags),
                name=f"{cfg.experiment}/{run_dir.name}",
                save_dir=str(run_dir),
                log_model=cfg.logger.log_model,
                config=to_container(cfg),
            )
        )
    elif cfg.logger.name == "tensorboard":
        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=""))
    return loggers


def finish_loggers(trainer: pl.Trainer) -> None:
    """Close a wandb run, so a second run in the same process gets a run of its own."""
    if any(isinstance(logger, WandbLogger) for logger in trainer.loggers):
        import wandb

        wandb.finish()
