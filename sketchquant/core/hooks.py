"""The typed contracts between callbacks and LightningModules (the user's design keeps the α(t) ramp and
teacher distillation as callbacks; this is how they talk to a module, instead of setting attributes).

A module opts in by implementing the methods; the callbacks check with ``isinstance`` (the protocols
are runtime-checkable) and fail with a message naming the method they need.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

__all__ = ["PenaltyWeighted", "Distillable"]


@runtime_checkable
class PenaltyWeighted(Protocol):
    """A module whose loss has a penalty weight set from outside before every training step
    (method A: ``L = L_cls + α(t)·L_q``, set by ``sketchquant.callbacks.AlphaRamp``)."""

    def set_penalty_weight(self, value: float) -> None: ...


@runtime_checkable
class Distillable(Protocol):
    """A module trained against a frozen teacher's logits (method B's KD, by ``sketchquant.callbacks.TeacherDistillation``).

    ``distillation_teacher()`` is the frozen network (outside the module's ``state_dict``, optimizer and
    DDP) or ``None`` when the module does not distil; ``teacher_is_pretrained`` says whether it carries
    real ImageNet weights; ``set_teacher_logits(logits)`` hands over the teacher's logits for the photo
    rows of the next training batch (zeros elsewhere), consumed by that step."""

    teacher_is_pretrained: bool

    def distillation_teacher(self) -> torch.nn.Module | None: ...

    def set_teacher_logits(self, logits: torch.Tensor) -> None: ...
