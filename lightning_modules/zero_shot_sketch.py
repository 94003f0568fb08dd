"""Method B as a LightningModule: one backbone for sketches and photos, CE + λ_kd·KD + λ_da·DA (docs/method.md §B)."""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics.classification import MulticlassAccuracy

from sketchquant.core.batch import DOMAIN, IMAGE, LABEL
from sketchquant.lightning_modules.base import SketchquantModule
from sketchquant.lightning_modules.components.sbir_losses import sbir_loss
from sketchquant.lightning_modules.components.sketch_net import FrozenTeacher, build_sketch_net
from sketchquant.lightning_modules.components.weight_ensemble import check_weight_ensemble, interpolate_state
from sketchquant.lightning_modules.config import ZeroShotModelConfig


class ZeroShotSketchModule(SketchquantModule):
    """``SketchNet`` + the three losses. The frozen ImageNet teacher is captured at construction (a copy of
    the ImageNet-initialised network, so a resumed run gets the same teacher) but is *not* a registered
    sub-module: it is outside ``state_dict``, the optimizer and DDP. The :class:`sketchquant.callbacks.TeacherDistillation`
    callback moves it to the device and hands over the teacher's logits (photo rows) before every training
    batch through :meth:`set_teacher_logits` (the :class:`~sketchquant.core.hooks.Distillable` contract).

    ``validation`` (held-out seen classes) logs ``val/acc`` and the classification loss; retrieval metrics
    come from :class:`sketchquant.callbacks.RetrievalEvaluator` on the returned ``embeddings["raw"]`` (the 512-d ``f``).
    """

    backbone_prefixes = ("net.backbone.",)

    config_class = ZeroShotModelConfig

    def __init__(
        self,
        config: ZeroShotModelConfig | dict,
        num_classes: int,
        max_epochs: int = 1,
        inference: bool = False,
    ) -> None:
        """``inference=True``: the weights will come from a checkpoint, so no pretrained weights are loaded
        and no distillation teacher is built (evaluation and search need none)."""
        super().__init__(config, num_classes=num_classes, max_epochs=max_epochs)
        # refused before the network (and its teacher) is built, not after a whole run
        check_weight_ensemble(self.config.weight_ensemble)
        if self.config.head_warmup_epochs < 0:
            raise ValueError(f"model.head_warmup_epochs must be >= 0, got {self.config.head_warmup_epochs}")
        # the ImageNet head exists only to be distilled into: without KD it would get no gradient (and
        # DDP would stop on a parameter that took no part in the loss)
        self.net = build_sketch_net(self.config, num_classes, weights="none" if inference else None)
        self.freeze_trunk(self.config.frozen_trunk)
        kd = bool(self.config.lambda_kd) and not inference
        self._teacher: tuple[FrozenTeacher, ...] = (self.net.make_teacher(),) if kd else ()
        self._teacher_logits: torch.Tensor | None = None
        # the pretrained weights for the weight-space ensemble, kept outside state_dict like the teacher
        # (a resumed run rebuilds them the same way)
        self._initial_state: tuple[dict[str, torch.Tensor], ...] = ()
        if self.config.weight_ensemble < 1.0 and not inference:
            self._initial_state = (self.pretrained_state(),)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")

    # ------------------------------------------------------------------------------------------- KD hooks
    @property
    def teacher(self) -> FrozenTeacher | None:
        return self._teacher[0] if self._teacher else None

    def distillation_teacher(self) -> FrozenTeacher | None:
        """:class:`~sketchquant.core.hooks.Distillable`: the frozen ImageNet teacher (None without KD)."""
        return self.teacher

    @property
    def teacher_is_pretrained(self) -> bool:
        return bool(self.net.backbone_info.has_imagenet_classifier)

    def set_teacher_logits(self, logits: torch.Tensor) -> None:
        """The teacher's logits for the next training batch (photo rows; zeros for sketches)."""
        self._teacher_logits = logits

    def pretrained_state(self) -> dict[str, torch.Tensor]:
        """A copy of the state entries that start from ImageNet (trunk, SVD-initialised embedding and
        ImageNet head); the seen-class classifier starts at random and is left out."""
        return {
            k: v.detach().clone() for k, v in self.state_dict().items() if not k.startswith("net.classifier.")
        }

    def ensemble_weights(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``state_dict`` (fine-tuned) ensembled with the pretrained weights by ``model.weight_ensemble``
        (:func:`~sketchquant.lightning_modules.components.weight_ensemble.interpolate_state`)."""
        if not self._initial_state:
            raise RuntimeError(
                "model.weight_ensemble < 1 needs the pretrained weights: the module was built for inference "
                "or with model.weight_ensemble=1"
            )
        return interpolate_state(self._initial_state[0], state_dict, self.config.weight_ensemble)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if self.net.imagenet_head is None:  # a checkpoint from before the head was built only for KD
            state = checkpoint.get("state_dict", {})
            for key in [k for k in state if k.startswith("net.imagenet_head.")]:
                del state[key]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Retrieval features ``f`` (``B×d``, not normalised; the metrics L2-normalise)."""
        return self.net.extract_features(images)

    def _common_step(self, batch: dict, stage: str) -> dict[str, Any]:
        images, labels, domain = batch[IMAGE], batch[LABEL], batch[DOMAIN]
        out = self.net(images, frozen_features=stage == "train" and self.features_frozen())
        if stage == "train":
            hp = self.config
            teacher_logits, self._teacher_logits = self._teacher_logits, None
            if hp.lambda_kd and teacher_logits is None:
                raise RuntimeError(
                    "lambda_kd > 0 but no teacher logits were handed over: add callbacks.TeacherDistillation "
                    "to the Trainer (sketchquant.app.build does) or set model.lambda_kd=0"
                )
            losses = sbir_loss(
                out.features,
                out.logits,
                labels,
                domain,
                out.imagenet_logits,
                teacher_logits,
                lambda_kd=hp.lambda_kd,
                lambda_da=hp.lambda_da,
                tau=hp.tau,
            )
            loss = losses.pop("loss")
            losses = {"loss": loss.detach(), **losses}
            self.train_acc(out.logits.detach(), labels)
            return {"loss": loss, "losses": losses, "metrics": {"acc": self.train_acc}, "embeddings": {}}
        emb = {"raw": out.features.detach()}
        if stage == "val":  # held-out SEEN classes: labels are classifier targets
            seen = labels < self.hparams.num_classes
            metrics = {}
            if bool(seen.all()):
                cls = torch.nn.functional.cross_entropy(out.logits, labels)
                self.val_acc(out.logits, labels)
                metrics = {"loss_cls": cls, "acc": self.val_acc}
            return {"loss": None, "losses": {}, "metrics": metrics, "embeddings": emb}
        return {"loss": None, "losses": {}, "metrics": {}, "embeddings": emb}
