"""Stop a run at the first NaN/Inf loss, before its backward pass and optimizer step."""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch


class NonFiniteLossError(ValueError):
    """Raised by :class:`NaNGuard`; the message names the step and every loss component (a ValueError: the
    command line reports it as a bad setting, in one line, exit code 2)."""


class NaNGuard(pl.Callback):
    """Checks the loss in ``on_before_backward``: the weights are never touched by a non-finite step, and
    no checkpoint is written after it (``last.ckpt`` from before stays as it was).

    The module may keep its loss components of the current step in ``pl_module.loss_components``
    (a ``dict[str, Tensor | float]``); they are all named in the error.
    """

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        if torch.isfinite(loss.detach()).all():
            return
        components = getattr(pl_module, "loss_components", None) or {}
        parts = []
        for name, value in components.items():
            value = float(value.detach().float().mean()) if torch.is_tensor(value) else float(value)
            flag = "" if math.isfinite(value) else "  <-- not finite"
            parts.append(f"  {name} = {value!r}{flag}")
        detail = "\n".join(parts) if parts else "  (the module reported no components)"
        raise NonFiniteLossError(
            f"non-finite training loss {float(loss.detach().float().mean())!r} at global step {trainer.global_step} "
            f"(epoch {trainer.current_epoch}); loss components:\n{detail}\n"
            "The run was stopped before this step's backward pass; checkpoints written before it are intact."
        )
