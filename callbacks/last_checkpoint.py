"""``last.ckpt`` inside an epoch: every N steps or minutes, and when the run is told to stop.

The end-of-epoch ``last.ckpt`` comes from a ``ModelCheckpoint``; this callback adds writes at the end of a
training batch — the point Lightning's loops resume from mid-epoch (with :class:`~callbacks.ExactResume`
the data continues at the next batch) — when

- ``every_n_steps`` optimizer steps or ``every_n_minutes`` passed since the last write, or
- the process received SIGTERM (a kill, ``scancel``, a time limit: Lightning then stops after this batch),
  or ``stop_signal`` (SIGUSR1: SLURM's ``--signal=SIGUSR1@90``). On ``stop_signal`` the run stops right
  after the write and, under SLURM (``SLURM_JOB_ID``), requeues its job with ``scontrol requeue``; the
  requeued job continues in the same run folder.

The last batch of an epoch is left to the end-of-epoch checkpoint, which follows it; a stop signal there
stops the run once that checkpoint is written. Under DDP the ranks agree on every write (any rank's
signal counts), so all of them save and stop at the same batch.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import pytorch_lightning as pl

log = logging.getLogger(__name__)

__all__ = ["LastCheckpoint", "RunStopped"]


class RunStopped(SystemExit):
    """The run stopped on a signal after writing a resumable ``last.ckpt``; ``code`` is 128 + signal."""

    def __init__(self, signum: int, ckpt: str) -> None:
        super().__init__(128 + int(signum))
        self.signum = int(signum)
        self.ckpt = ckpt

    def __str__(self) -> str:
        return f"stopped on {signal.Signals(self.signum).name} with a resumable checkpoint {self.ckpt}"


def requeue_slurm_job() -> None:
    """``scontrol requeue <job>`` (array jobs: ``<array job>_<task>``); a failure is logged, not raised."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        log.error("could not requeue SLURM job %s: %s", job, err)
        return
    if result.returncode == 0:
        log.info("requeued SLURM job %s", job)
    else:
        log.error("scontrol requeue %s failed (%d): %s", job, result.returncode, result.stderr.strip())


class LastCheckpoint(pl.Callback):
    def __init__(
        self,
        dirpath: str | os.PathLike,
        every_n_steps: int = 0,
        every_n_minutes: float = 0.0,
        stop_signal: signal.Signals | None = signal.SIGUSR1,
        filename: str = "last.ckpt",
    ) -> None:
        self.path = Path(dirpath) / filename
        self.every_n_steps = int(every_n_steps or 0)
        self.every_n_seconds = float(every_n_minutes or 0.0) * 60.0
        self.stop_signal = stop_signal
        self._stop_requested = False  # set by the signal handler
        self._stop_after_epoch: int | None = None
        self._old_handler = None
        self._last_write = time.monotonic()

    # -- the signal ------------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self._stop_requested = True  # acted upon at the end of the current training batch

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_write = time.monotonic()
        self._stop_requested = False
        self._stop_after_epoch = None
        if self.stop_signal is not None:
            try:
                self._old_handler = signal.signal(self.stop_signal, self._on_signal)
            except ValueError:  # not the main thread: no handler (the signal keeps its default)
                self._old_handler = None

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._old_handler is not None and self.stop_signal is not None:
            try:
                signal.signal(self.stop_signal, self._old_handler)
            except ValueError:
                pass
            self._old_handler = None

    # -- writing ---------------------------------------------------------------------------------------
    def _agree(self, trainer: pl.Trainer, flag: bool) -> bool:
        if trainer.world_size > 1:
            return bool(trainer.strategy.reduce_boolean_decision(flag, all=False))
        return flag

    def _write(self, trainer: pl.Trainer) -> None:
        for logger in trainer.loggers:  # the rows up to this checkpoint are on disk with it
            logger.save()
        trainer.save_checkpoint(self.path)
        self._last_write = time.monotonic()

    def _stop(self, trainer: pl.Trainer) -> None:
        signum = int(self.stop_signal or signal.SIGUSR1)
        log.info(
            "%s: stopping at epoch %d, step %d with a resumable %s",
            signal.Signals(signum).name,
            trainer.current_epoch,
            trainer.global_step,
            self.path,
        )
        if trainer.is_global_zero and os.environ.get("SLURM_JOB_ID"):
            requeue_slurm_job()
        raise RunStopped(signum, str(self.path))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.sanity_checking:
            return
        due = bool(self.every_n_steps and trainer.global_step % self.every_n_steps == 0)
        due |= bool(self.every_n_seconds and time.monotonic() - self._last_write >= self.every_n_seconds)
        stop = self._stop_requested
        sigterm = trainer.received_sigterm
        write, stop = self._agree(trainer, due or stop or sigterm), self._agree(trainer, stop)
        done = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        if done >= trainer.num_training_batches:  # the end-of-epoch checkpoint follows
            if stop:
                self._stop_after_epoch = trainer.current_epoch
            return
        if write:
            self._write(trainer)
        if stop:
            self._stop(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a stop asked for in the previous epoch's last batch: its checkpoint and epoch rows are written
        if self._stop_after_epoch is not None:
            self._stop(trainer)
