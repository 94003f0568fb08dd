"""Loggers of a run: CSV always (appending, so fit/test in fresh DDP workers and resumed runs continue one
``metrics.csv``), plus wandb (offline unless ``WANDB_MODE=online``) or TensorBoard.

``metrics.csv`` after a resume holds the rows a straight run would have: rows are written as they are logged
(a kill loses at most the row being written), and a resumed run first drops the rows the interrupted run
logged after its checkpoint (at or beyond the resumed run's first step), which it logs again itself."""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path

import pytorch_lightning as pl
from lightning_fabric.loggers.logger import rank_zero_experiment
from omegaconf import DictConfig
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from sketchquant.core.config import to_container
from sketchquant.core.io import atomic_write

log = logging.getLogger("sketchquant")


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

    def has_row(self, step: int, metrics: dict[str, float]) -> bool:
        """A row of ``step`` with exactly these keys is in the file (or waiting to be written)."""
        keys = set(metrics) | {"step"}
        for row in self.metrics:
            if int(row.get("step", -1)) == step and set(row) == keys:
                return True
        if not self._fs.isfile(self.metrics_file_path):
            return False
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            for row in csv.DictReader(file):
                filled = {k for k, v in row.items() if k is not None and v not in ("", None)}
                if row.get("step") == str(step) and filled == keys:
                    return True
        return False

    def drop_rows_from(self, step: int) -> int:
        """Remove the rows of ``step`` and later (and a row cut short by a kill); returns how many."""
        self.metrics = [row for row in self.metrics if int(row.get("step", -1)) < step]
        if not self._fs.isfile(self.metrics_file_path):
            return 0
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            text = file.read()
        cut = bool(text) and not text.endswith("\n")  # the last row was cut short by a kill
        if cut:
            text = text[: text.rfind("\n") + 1]
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = list(reader.fieldnames or [])
        rows = list(reader)

        def keep(row: dict) -> bool:
            try:
                complete = None not in row and None not in row.values()
                return complete and int(float(row.get("step") or "")) < step
            except ValueError:
                return False

        kept = [row for row in rows if keep(row)]
        if cut or len(kept) < len(rows):

            def write(tmp) -> None:
                with open(tmp, "w", newline="") as out:
                    writer = csv.DictWriter(out, fieldnames=header)
                    writer.writeheader()
                    writer.writerows(kept)

            atomic_write(self.metrics_file_path, write)
        return len(rows) - len(kept) + int(cut)


class AppendingCSVLogger(CSVLogger):
    """``resuming``: the first logged step drops the rows the interrupted run logged from that step on."""

    def __init__(self, *args, resuming: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._resuming = resuming
        self._resume_rows: list[tuple[int, dict]] = []

    def resume_rows(self, rows: list[tuple[int, dict]]) -> None:
        """Rows the checkpoint says were logged right after it (a kill may have lost them): added with the
        first row of the resumed run, if missing."""
        self._resume_rows = list(rows)

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self._resuming and step is not None:
            self._resuming = False
            dropped = self.experiment.drop_rows_from(int(step))
            if dropped:
                log.info("metrics.csv: %d rows logged after the checkpoint are logged again", dropped)
            for row_step, row in self._resume_rows:
                if row_step < step and not self.experiment.has_row(row_step, row):
                    self.experiment.log_metrics(row, row_step)
                    log.info(
                        "metrics.csv: the row of step %d (lost with the interrupted run) added", row_step
                    )
            self._resume_rows = []
        super().log_metrics(metrics, step)
        self.save()  # every row on disk at once: a kill costs at most the row being written

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback) -> None:
        self.save()


def build_loggers(cfg: DictConfig, run_dir: Path, resuming: bool = False) -> list:
    loggers: list = [AppendingCSVLogger(save_dir=str(run_dir), name="", version="", resuming=resuming)]
    if cfg.logger.name == "wandb":
        # never wait on the network: offline unless the user asked for online (docs/method.md §E)
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
        import wandb  # lazy: a WandbLogger has imported it already; runs without one never pay its 2 s

        wandb.finish()
