"""Method A as a LightningModule: ``L = L_cls + α(t)·L_q`` over per-window features (SPEC §A)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from sketchquant.core.batch import IMAGE, LABEL
from sketchquant.core.config import choice
from sketchquant.lightning_modules.base import OptimConfig, SketchquantModule
from sketchquant.lightning_modules.components.backbones import create_backbone
from sketchquant.lightning_modules.components.irelu import quantization_loss
from sketchquant.lightning_modules.components.quant_encoder import QuantizationEncoder, classification_loss


class QuantizationModule(SketchquantModule):
    """:class:`QuantizationEncoder` trained with classification + the α(t)-weighted quantization penalty.

    ``alpha`` (0 until set) is the weight of the quantization penalty, handed over every step by
    :class:`sketchquant.callbacks.AlphaRamp` through :meth:`set_penalty_weight` (the
    :class:`~sketchquant.core.hooks.PenaltyWeighted` contract).
    Validation/test return two embeddings for :class:`sketchquant.callbacks.RetrievalEvaluator`: ``codes`` (the
    uint8 iReLU codes as float, ``P·d``) and ``float`` (the continuous ``v``), logged as
    ``val/codes/...`` and ``val/float/...``.
    """

    backbone_prefixes = ("encoder.trunk.",)

    def __init__(
        self,
        num_classes: int,
        multi_label: bool = True,
        backbone: str = "tf_efficientnet_lite0",
        weights: str = "auto",
        feature_stage: int = -1,
        window: str = "sliding",
        kernel=(2, 2),
        stride=(1, 1),
        num_stripes: int = 4,
        dim: int = 64,
        bytes_per_image: int | None = None,
        bits: int = 8,
        per_window_classifier: bool = False,
        image_size: int = 64,
        optim: dict[str, Any] | None = None,
        max_epochs: int = 10,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        trunk = create_backbone(backbone, weights=weights, num_classes=None)
        self.encoder = QuantizationEncoder(
            num_classes=num_classes,
            backbone_module=trunk,
            feature_stage=feature_stage,
            window=window,
            kernel=tuple(kernel),
            stride=tuple(stride),
            num_stripes=num_stripes,
            dim=dim,
            bytes_per_image=bytes_per_image,
            bits=bits,
            image_size=image_size,
            per_window_classifier=per_window_classifier,
        )
        self.alpha = 0.0

    def set_penalty_weight(self, value: float) -> None:
        """α(t) of ``L = L_cls + α(t)·L_q`` for the next training steps."""
        self.alpha = float(value)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 codes ``B×(P·d)``."""
        return self.encoder.encode(images)

    def _common_step(self, batch: dict, stage: str) -> dict[str, Any]:
        images, labels = batch[IMAGE], batch[LABEL]
        out = self.encoder(images)
        multi = bool(self.hparams.multi_label)
        l_cls = classification_loss(out.logits, labels, multi)
        l_q = quantization_loss(out.continuous, self.encoder.bits)
        alpha = float(self.alpha)
        loss = l_cls + alpha * l_q
        losses = {"loss": loss.detach(), "cls": l_cls.detach(), "quant": l_q.detach()}
        if stage == "train":
            return {"loss": loss, "losses": losses, "metrics": {}, "embeddings": {}}
        codes = out.codes.detach().round().clamp_(0, 2**self.encoder.bits - 1)
        emb = {"codes": codes.flatten(1), "float": out.continuous.detach().flatten(1)}
        return {"loss": None, "losses": losses, "metrics": {}, "embeddings": emb}


@dataclass
class AlphaConfig:
    """α(t) ramp of SPEC §A."""

    final: float = 1.0
    t1: float = 1.0
    t2: float = 5.0
    shape: str = choice("linear", "sigmoid")
    unit: str = choice("epoch", "step")


@dataclass
class QuantModelConfig:
    """Method A (SPEC §A)."""

    name: str = "quantization"
    backbone: str = "tf_efficientnet_lite0"
    weights: str = "auto"
    feature_stage: int = -1
    window: str = choice("sliding", "stripes", "global")
    kernel: list[int] = field(default_factory=lambda: [2, 2])
    stride: list[int] = field(default_factory=lambda: [1, 1])
    num_stripes: int = 4
    dim: int = 64
    bytes_per_image: int | None = None  # d = bytes_per_image / P when set (equal bytes across window layouts)
    bits: int = 8
    per_window_classifier: bool = False
    alpha: AlphaConfig = field(default_factory=AlphaConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=1e-4))
