"""Re-seed every RNG at the start of each training epoch and before every training step, so a resumed run
continues exactly like a run that was never stopped (Lightning's checkpoints do not carry the global RNG
states) — also when it resumes inside an epoch, where Lightning calls no ``on_train_epoch_start``."""

from __future__ import annotations

import random

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.seed import seed_everything


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A distinct 32-bit seed per (run seed, epoch, rank)."""
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + int(rank) * 104_729) % (2**32 - 1)


class EpochSeed(pl.Callback):
    """Seeds python, numpy and torch (and, through ``PL_GLOBAL_SEED``, the DataLoader workers) with
    :func:`epoch_seed` before the epoch's data iterator is created (and at a resume inside an epoch), and
    the torch, numpy and python RNGs again before every training step (from the global step), so the
    step's random draws (the N(0, I) targets of the distribution alignment, dropout) depend neither on how
    many numbers the data pipeline consumed nor on where the run was resumed."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def _seed_epoch(self, trainer: pl.Trainer) -> None:
        seed_everything(
            epoch_seed(self.seed, trainer.current_epoch, trainer.global_rank), workers=True, verbose=False
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path is not None and trainer.fit_loop.restarted_mid_epoch:
            self._seed_epoch(trainer)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._seed_epoch(trainer)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int
    ) -> None:

        step_seed = epoch_seed(self.seed + 1, trainer.global_step, trainer.global_rank)
        torch.manual_seed(step_seed)
        np.random.seed(step_seed)
        random.seed(step_seed)
