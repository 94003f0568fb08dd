"""Plain one-line-per-epoch progress for logs and non-terminal output (the rich bar is for terminals)."""

from __future__ import annotations

import time

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_only


def _fmt(metrics: dict, prefixes: tuple[str, ...]) -> str:
    items = []
    for key in sorted(metrics):
        if key.startswith(prefixes) and "_step" not in key:
            try:
                items.append(f"{key}={float(metrics[key]):.4f}")
            except (TypeError, ValueError):
                continue
    return " ".join(items)


class EpochSummary(pl.Callback):
    def __init__(self, printer=print) -> None:
        self.printer = printer
        self._start = time.perf_counter()

    @rank_zero_only
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    @rank_zero_only
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        seconds = time.perf_counter() - self._start
        line = _fmt(trainer.callback_metrics, ("train/", "val/"))
        self.printer(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} ({seconds:.1f}s) {line}")
