"""The frozen ImageNet teacher of method B (SPEC §B formula (2)).

At fit start the callback takes the module's teacher (a copy of the ImageNet-initialised network with its
1000-way classifier, captured when the module was built), puts it on the module's device in eval mode with
no gradients, and before every training batch writes ``batch["teacher_logits"]`` — teacher logits for the
photo rows (sketch rows are zeros and ignored by the loss; the teacher never sees sketches). The teacher
is not a sub-module of the LightningModule: it is in no optimizer, no DDP bucket and no checkpoint.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from sketchquant.core.batch import DOMAIN, IMAGE, PHOTO

TEACHER_KEY = "teacher_logits"


class TeacherDistillation(pl.Callback):
    def __init__(self, tau: float = 1.0) -> None:
        self.tau = float(tau)
        self.teacher: torch.nn.Module | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        teacher = getattr(pl_module, "teacher", None)
        if teacher is None:
            if float(getattr(pl_module.hparams, "lambda_kd", 0) or 0):
                raise RuntimeError("TeacherDistillation: the module has lambda_kd > 0 but no teacher")
            return
        if hasattr(pl_module.hparams, "tau"):
            pl_module.hparams.tau = self.tau
        self.teacher = teacher.to(pl_module.device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        if not getattr(pl_module, "has_imagenet_teacher", True):
            msg = (
                "\n" + "!" * 78 + "\n"
                "TeacherDistillation: the teacher has NO ImageNet weights (model.weights="
                f"{pl_module.hparams.get('weights')!r}). Distillation then pulls towards a random network.\n"
                "Use model.weights=auto with tf_efficientnet_lite0 (offline), a weights file, or lambda_kd=0.\n"
                + "!"
                * 78
            )
            rank_zero_warn(msg)

    @torch.no_grad()
    def teacher_logits(self, images: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        assert self.teacher is not None
        photo = domain == PHOTO
        out = torch.zeros(images.shape[0], 1000, device=images.device, dtype=torch.float32)
        if bool(photo.any()):
            out[photo] = self.teacher(images[photo]).float()
        return out

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.teacher is not None:
            batch[TEACHER_KEY] = self.teacher_logits(batch[IMAGE], batch[DOMAIN])
