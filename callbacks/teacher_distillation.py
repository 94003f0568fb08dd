"""The frozen ImageNet teacher of method B (docs/method.md §B formula (2)).

At fit start the callback takes the module's teacher (:class:`~sketchquant.core.hooks.Distillable`: a copy of
the ImageNet-initialised network with its 1000-way classifier, captured when the module was built), puts
it on the module's device in eval mode with no gradients, and before every training batch hands the
module the teacher's logits for the photo rows (sketch rows are zeros and ignored by the loss; the
teacher never sees sketches) through ``set_teacher_logits``. The teacher is not a sub-module of the
LightningModule: it is in no optimizer, no DDP bucket and no checkpoint. The temperature τ is the
module's own (``model.tau``): the callback only supplies logits.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from sketchquant.core.batch import DOMAIN, IMAGE, PHOTO
from sketchquant.core.hooks import Distillable


class TeacherDistillation(pl.Callback):
    def __init__(self) -> None:
        self.teacher: torch.nn.Module | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not isinstance(pl_module, Distillable):
            raise TypeError(
                "TeacherDistillation needs a module with distillation_teacher() and set_teacher_logits() "
                f"(sketchquant.core.hooks.Distillable); {type(pl_module).__name__} has neither"
            )
        teacher = pl_module.distillation_teacher()
        if teacher is None:  # the module does not distil (lambda_kd = 0)
            self.teacher = None
            return
        self.teacher = teacher.to(pl_module.device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        if not pl_module.teacher_is_pretrained:
            msg = (
                "\n" + "!" * 78 + "\n"
                "TeacherDistillation: the teacher has NO ImageNet weights (model.weights="
                f"{getattr(getattr(pl_module, 'config', None), 'weights', None)!r}). Distillation then pulls "
                "towards a random network.\n"
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
            pl_module.set_teacher_logits(self.teacher_logits(batch[IMAGE], batch[DOMAIN]))
