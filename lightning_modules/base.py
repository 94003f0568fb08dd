"""What both LightningModules share: the optimizer + schedule of the config, loss-component bookkeeping
for the NaN guard, and the resolved config carried inside every checkpoint."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any, ClassVar, TypeVar

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torchmetrics import Metric

from sketchquant.lightning_modules.config import OptimConfig

CONFIG_KEY = "sketchquant"
C = TypeVar("C")


def build_optimizer(params, optim: OptimConfig) -> torch.optim.Optimizer:
    """``params``: parameters or param-group dicts (a group may carry ``lr_mult``)."""
    lr, wd = float(optim.lr), float(optim.weight_decay)
    params = list(params)
    if params and isinstance(params[0], dict):
        params = [{"params": g["params"], "lr": lr * float(g.get("lr_mult", 1.0))} for g in params]
    if optim.name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if optim.name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if optim.name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=float(optim.momentum))
    raise ValueError(f"model.optim.name={optim.name!r}: expected adam, adamw or sgd")


def build_schedule(optimizer: torch.optim.Optimizer, optim: OptimConfig, max_epochs: int):
    """Per epoch, every param group from its own lr to its own floor ``lr · final_factor``:
    ``exp``: ``lr · final_factor^(epoch / max_epochs)`` (SAKE: ``lr · 0.001^(epoch/E)``); ``cosine``:
    ``floor + (lr − floor)·(1 + cos(π·epoch / max_epochs))/2``; ``none``: constant."""
    factor = float(optim.final_factor)
    epochs = max(int(max_epochs), 1)
    if optim.schedule == "exp":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: factor ** (epoch / epochs))
    if optim.schedule == "cosine":
        # a multiplier of each group's own lr: CosineAnnealingLR's single eta_min would send every group
        # to the first group's floor (the new layers of head_lr_mult would decay to the trunk's)
        def cosine(epoch: int) -> float:
            return factor + (1.0 - factor) * (1.0 + math.cos(math.pi * min(epoch, epochs) / epochs)) / 2.0

        return torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
    if optim.schedule == "none":
        return None
    raise ValueError(f"model.optim.schedule={optim.schedule!r}: expected exp, cosine or none")


def as_config(config_class: type[C], value: C | Mapping[str, Any] | None) -> C:
    """``value`` as a ``config_class`` instance: the dataclass itself, or a mapping of its fields (a
    checkpoint's plain hyper-parameters; missing fields take the dataclass defaults)."""
    if isinstance(value, config_class):
        return value
    merged = OmegaConf.merge(OmegaConf.structured(config_class), dict(value or {}))
    return OmegaConf.to_object(merged)


class SketchquantModule(pl.LightningModule):
    """Base class: ``Cls(config, **data facts)``, where ``config`` is the class's :attr:`config_class`
    (the model section's dataclass, or a mapping of its fields). Its hyper-parameters are plain data
    (``{"config": asdict(config), **facts}``), so a checkpoint loads with ``weights_only=True``.

    Subclasses implement ``_common_step(batch, stage)`` returning
    ``{"loss": Tensor | None, "losses": {name: Tensor}, "embeddings": {name: B×d}, "metrics": {...}}``."""

    config_class: ClassVar[type]
    #: set by sketchquant.app.train to the resolved config; saved in every checkpoint under ``CONFIG_KEY``
    sketchquant_config: dict | None = None

    def __init__(self, config: Any, **facts: Any) -> None:
        super().__init__()
        self.config = as_config(self.config_class, config)
        self.save_hyperparameters({"config": asdict(self.config), **facts})
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
    #: parameter-name prefixes of the pretrained trunk; everything else is a new layer (``head_lr_mult``)
    backbone_prefixes: tuple[str, ...] = ()

    def train(self, mode: bool = True):
        """``model.freeze_bn``: the pretrained trunk's BatchNorm layers stay in eval mode while the rest
        trains, so their ImageNet statistics are kept (small batches mixing two domains would overwrite
        them); their affine weights still learn."""
        super().train(mode)
        if mode:
            self._freeze_trunk_bn()
        return self

    def on_train_epoch_start(self) -> None:
        # Lightning never calls train() before the first epoch (a module is built in train mode), and
        # after validation it restores each submodule's own mode: freeze here too
        self._freeze_trunk_bn()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # a run resumed inside an epoch gets no on_train_epoch_start
        if getattr(self, "_bn_epoch", None) != self.current_epoch:
            self._freeze_trunk_bn()

    def features_frozen(self) -> bool:
        """True in the first ``model.head_warmup_epochs`` epochs, when only the heads learn (LP-FT)."""
        return self.current_epoch < int(getattr(getattr(self, "config", None), "head_warmup_epochs", 0))

    def _freeze_trunk_bn(self) -> None:
        """Trunk BatchNorm layers in eval mode: all of them with ``freeze_bn`` and while the features are
        frozen (``head_warmup_epochs``), else those whose weights are frozen (``frozen_trunk``); the others
        follow the module's mode (back to training after the warm-up)."""
        every = getattr(getattr(self, "config", None), "freeze_bn", False) or self.features_frozen()
        trunk = tuple(p.rstrip(".") for p in self.backbone_prefixes)
        for name, module in self.named_modules():
            if name.startswith(trunk) and isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                if every or not any(p.requires_grad for p in module.parameters()):
                    module.eval()
                else:
                    module.train(self.training)
        self._bn_epoch = self.current_epoch

    def freeze_trunk(self, share: float) -> None:
        """The first ``share`` of the trunk's parameter tensors (in the network's order: from the input)
        take no gradient."""
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"model.frozen_trunk must be in [0, 1], got {share}")
        trunk = [p for n, p in self.named_parameters() if n.startswith(self.backbone_prefixes)]
        for p in trunk[: int(round(len(trunk) * share))]:
            p.requires_grad_(False)

    def param_groups(self, head_lr_mult: float) -> list[dict]:
        trunk, new = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (trunk if name.startswith(self.backbone_prefixes) else new).append(p)
        groups = [{"params": trunk, "lr_mult": 1.0}, {"params": new, "lr_mult": float(head_lr_mult)}]
        return [g for g in groups if g["params"]]

    def configure_optimizers(self):
        optim = self.config.optim
        optimizer = build_optimizer(self.param_groups(float(optim.head_lr_mult)), optim)
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
