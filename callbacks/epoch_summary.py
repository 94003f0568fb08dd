"""Plain one-line-per-epoch progress for logs and non-terminal output (the rich bar is for terminals)."""

from __future__ import annotations

import logging
import time

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_only


def _fmt(metrics: dict, prefixes: tuple[str, ...]) -> str:
    items = []
    for key in sorted(metrics):
        leaf = key.rsplit("/", 1)[-1]
        if (
            key.startswith(prefixes)
            and not key.endswith(("_step", "_epoch", "_micro"))
            and not leaf.startswith("num_")
        ):
            try:
                items.append(f"{key}={float(metrics[key]):.4f}")
            except (TypeError, ValueError):
                continue
    return " ".join(items)


class EpochSummary(pl.Callback):
    """Prints one line per epoch (train losses, validation metrics, seconds) and logs it to ``train.log``."""

    def __init__(self, printer=print, echo: bool = True) -> None:
        self.printer = printer
        self.echo = echo
        self._start = time.perf_counter()

    @rank_zero_only
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    @rank_zero_only
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        seconds = time.perf_counter() - self._start
        line = _fmt(trainer.callback_metrics, ("train/", "val/"))
        text = f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} ({seconds:.1f}s) {line}"
        logging.getLogger("sketchquant").info(text)
        if self.echo:
            self.printer(text, flush=True)
