"""The typed contracts between callbacks and LightningModules (the user's design keeps the α(t) ramp and
teacher distillation as callbacks; this is how they talk to a module, instead of setting attributes).

A module opts in by implementing the methods; the callbacks check with ``isinstance`` (the protocols
are runtime-checkable) and fail with a message naming the method they need.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from sketchquant.core.schema import choice

if TYPE_CHECKING:  # annotations only: the config below must import without torch
    import torch

__all__ = ["AlphaConfig", "PenaltyWeighted", "Distillable"]


@dataclass
class AlphaConfig:
    """The α(t) ramp of ``L = L_cls + α(t)·L_q`` (docs/method.md §A): 0 before ``t1``, then ``linear`` or
    ``sigmoid`` up to ``final`` at ``t2``; ``t`` counts epochs or steps. The model section's ``alpha``
    (:class:`~sketchquant.lightning_modules.config.QuantModelConfig`) and the
    :class:`~sketchquant.callbacks.AlphaRamp` that applies it through :class:`PenaltyWeighted` share it."""

    final: float = 0.1  # L_q sums over d (about d/12 for random fractions): 1.0 swamps L_cls
    t1: float = 2.0  # classification alone first, then the penalty ramps in
    t2: float = 6.0
    shape: str = choice("linear", "sigmoid")
    unit: str = choice("epoch", "step")


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
