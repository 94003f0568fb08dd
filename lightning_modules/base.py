"""What both LightningModules share: the optimizer + schedule of the config, loss-component bookkeeping
for the NaN guard, and the resolved config carried inside every checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from torchmetrics import Metric

from sketchquant.core.config import choice

CONFIG_KEY = "sketchquant"


def build_optimizer(params, optim: dict[str, Any]) -> torch.optim.Optimizer:
    """``params``: parameters or param-group dicts (a group may carry ``lr_mult``)."""
    name = optim.get("name", "adam")
    lr, wd = float(optim.get("lr", 1e-4)), float(optim.get("weight_decay", 0.0))
    params = list(params)
    if params and isinstance(params[0], dict):
        params = [{"params": g["params"], "lr": lr * float(g.get("lr_mult", 1.0))} for g in params]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=float(optim.get("momentum", 0.9)))
    raise ValueError(f"model.optim.name={name!r}: expected adam, adamw or sgd")


def build_schedule(optimizer: torch.optim.Optimizer, optim: dict[str, Any], max_epochs: int):
    """``exp``: ``lr · final_factor^(epoch / max_epochs)`` (SAKE: ``lr · 0.001^(epoch/E)``), per epoch;
    ``cosine``: cosine from lr to ``lr · final_factor`` over ``max_epochs``; ``none``: constant."""
    schedule = optim.get("schedule", "exp")
    factor = float(optim.get("final_factor", 1e-3))
    epochs = max(int(max_epochs), 1)
    if schedule == "exp":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: factor ** (epoch / epochs))
    if schedule == "cosine":
        lr = optimizer.param_groups[0]["lr"]
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=lr * factor)
    if schedule == "none":
        return None
    raise ValueError(f"model.optim.schedule={schedule!r}: expected exp, cosine or none")


class SketchquantModule(pl.LightningModule):
    """Base class: subclasses implement ``_common_step(batch, stage)`` returning
    ``{"loss": Tensor | None, "losses": {name: Tensor}, "embeddings": {name: B×d}, "metrics": {...}}``."""

    #: set by sketchquant.app.train to the resolved config; saved in every checkpoint under ``CONFIG_KEY``
    sketchquant_config: dict | None = None

    def __init__(self) -> None:
        super().__init__()
        self.loss_components: dict[str, torch.Tensor] = {}

    # -------------------------------------------------------------------------------------------
    def _common_step(self, batch: dict, stage: str) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _log_step(self, out: dict[str, Any], stage: str, batch_size: int) -> None:
        on_step = stage == "train"
        for name, value in out.get("losses", {}).items():
            self.log(
                f"{stage}/{name}",
                value,
                on_step=on_step,
                on_epoch=True,
                batch_size=batch_size,
                sync_dist=True,
                prog_bar=name == "loss",
            )
        for name, value in out.get("metrics", {}).items():
            # a torchmetrics Metric accumulates and syncs across ranks itself
            sync = {} if isinstance(value, Metric) else {"batch_size": batch_size, "sync_dist": True}
            self.log(f"{stage}/{name}", value, on_step=False, on_epoch=True, prog_bar=stage == "val", **sync)

    def training_step(self, batch: dict, batch_idx: int):
        out = self._common_step(batch, "train")
        self.loss_components = out.get("losses", {})
        self._log_step(out, "train", batch["image"].shape[0])
        return out["loss"]

    def validation_step(self, batch: dict, batch_idx: int):
        out = self._common_step(batch, "val")
        self._log_step(out, "val", batch["image"].shape[0])
        return {"embeddings": out["embeddings"]}

    def test_step(self, batch: dict, batch_idx: int):
        out = self._common_step(batch, "test")
        self._log_step(out, "test", batch["image"].shape[0])
        return {"embeddings": out["embeddings"]}

    # -------------------------------------------------------------------------------------------
    def _optim_cfg(self) -> dict[str, Any]:
        return dict(self.hparams.get("optim") or {})

    #: parameter-name prefixes of the pretrained trunk; everything else is a new layer (``head_lr_mult``)
    backbone_prefixes: tuple[str, ...] = ()

    def param_groups(self, head_lr_mult: float) -> list[dict]:
        trunk, new = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (trunk if name.startswith(self.backbone_prefixes) else new).append(p)
        groups = [{"params": trunk, "lr_mult": 1.0}, {"params": new, "lr_mult": float(head_lr_mult)}]
        return [g for g in groups if g["params"]]

    def configure_optimizers(self):
        optim = self._optim_cfg()
        optimizer = build_optimizer(self.param_groups(float(optim.get("head_lr_mult", 1.0))), optim)
        schedule = build_schedule(optimizer, optim, self.hparams.get("max_epochs", 1))
        if schedule is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.sketchquant_config is not None:
            checkpoint[CONFIG_KEY] = self.sketchquant_config

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.sketchquant_config is None and CONFIG_KEY in checkpoint:
            self.sketchquant_config = checkpoint[CONFIG_KEY]


@dataclass
class OptimConfig:
    name: str = choice("adam", "adamw", "sgd")
    lr: float = 1e-4
    weight_decay: float = 5e-4
    momentum: float = 0.9
    schedule: str = choice("exp", "cosine", "none")  # exp: lr * final_factor^(epoch/max_epochs) (SAKE)
    final_factor: float = 1e-3
    head_lr_mult: float = 1.0  # lr multiplier of the new layers (embedding, heads); 1 = SAKE
