"""Method A as a LightningModule: ``L = L_cls + α(t)·L_q`` over per-window features (docs/method.md §A)."""

from __future__ import annotations

from typing import Any

import torch

from sketchquant.core.batch import IMAGE, LABEL
from sketchquant.lightning_modules.base import SketchquantModule
from sketchquant.lightning_modules.components.irelu import quantization_loss
from sketchquant.lightning_modules.components.quant_encoder import build_code_encoder, classification_loss
from sketchquant.lightning_modules.config import QuantModelConfig


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

    config_class = QuantModelConfig

    def __init__(
        self,
        config: QuantModelConfig | dict,
        num_classes: int,
        multi_label: bool,
        image_size: int,
        max_epochs: int = 1,
        inference: bool = False,
    ) -> None:
        """``inference=True``: the weights will come from a checkpoint (no pretrained weights loaded)."""
        super().__init__(
            config,
            num_classes=num_classes,
            multi_label=multi_label,
            image_size=image_size,
            max_epochs=max_epochs,
        )
        weights = "none" if inference else None
        self.encoder = build_code_encoder(self.config, num_classes, image_size, weights=weights)
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
