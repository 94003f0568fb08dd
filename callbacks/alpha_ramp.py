"""The α(t) penalty ramp of method A's loss ``L = L_cls + α(t)·L_q`` (docs/method.md §A).

**[decision: the patent's formula image is missing; its text names T1, T2 and α_f]**

- ``linear`` (default): ``α(t) = 0`` for ``t < T1``; ``α_f·(t − T1)/(T2 − T1)`` for ``T1 ≤ t < T2``;
  ``α_f`` for ``t ≥ T2``.
- ``sigmoid``: ``α(t) = α_f·exp(−5·(1 − x)²)`` with ``x = (t − T1)/(T2 − T1)`` clipped to ``[0, 1]``.
  Followed literally, so for ``t ≤ T1`` it is ``α_f·e^−5 ≈ 0.0067·α_f``, **not** 0 (the penalty is
  tiny but on from the first step).

``t`` counts epochs by default (``unit="epoch"``: ``trainer.current_epoch``, an integer; with
``fractional=True`` it is ``epoch + batch_idx / num_training_batches``) or optimizer steps
(``unit="step"``: ``trainer.global_step``, the number of optimizer steps already taken).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytorch_lightning as pl

from sketchquant.core.hooks import AlphaConfig, PenaltyWeighted

SHAPES = ("linear", "sigmoid")
UNITS = ("epoch", "step")


def alpha_schedule(t: float, *, alpha_final: float, t1: float, t2: float, shape: str = "linear") -> float:
    """α(t) for the ramp described in the module docstring. ``T2 ≤ T1`` raises ``ValueError``."""
    if not t2 > t1:
        raise ValueError(f"alpha ramp needs t2 > t1, got t1={t1}, t2={t2}")
    if shape not in SHAPES:
        raise ValueError(f"alpha ramp shape must be one of {SHAPES}, got {shape!r}")
    alpha_final = float(alpha_final)
    if shape == "linear":
        if t < t1:
            return 0.0
        if t >= t2:
            return alpha_final
        return alpha_final * (t - t1) / (t2 - t1)
    x = min(max((t - t1) / (t2 - t1), 0.0), 1.0)
    return alpha_final * math.exp(-5.0 * (1.0 - x) ** 2)


class AlphaRamp(pl.Callback):
    """Hands α(t) to the module through :meth:`~sketchquant.core.hooks.PenaltyWeighted.set_penalty_weight`
    before every training batch and logs it as ``train/alpha`` (on step).

    The value is also set at ``on_train_start`` so it exists before the first batch (and before any
    validation that follows). A module without ``set_penalty_weight`` is refused at the start of fit.

    Checkpointing: :meth:`state_dict` stores the schedule parameters and the last ``t``/α. On resume
    (``trainer.fit(..., ckpt_path=...)``) Lightning calls :meth:`load_state_dict` and **the checkpoint's
    schedule parameters win** (a resumed run continues the same ramp); a warning names any parameter
    that differs from the constructor's. α itself is recomputed from the restored epoch/step.
    """

    def __init__(self, config: AlphaConfig | None = None, *, fractional: bool = False, log: bool = True):
        """``config``: the ramp (``model.alpha``; default :class:`AlphaConfig`'s)."""
        super().__init__()
        config = config or AlphaConfig()
        if config.unit not in UNITS:
            raise ValueError(f"alpha ramp unit must be one of {UNITS}, got {config.unit!r}")
        alpha_schedule(config.t1, alpha_final=config.final, t1=config.t1, t2=config.t2, shape=config.shape)
        self.alpha_final = float(config.final)
        self.t1 = config.t1
        self.t2 = config.t2
        self.shape = config.shape
        self.unit = config.unit
        self.fractional = bool(fractional)
        self.log = log
        self.last_t: float | None = None
        self.last_alpha: float | None = None

    # ------------------------------------------------------------------------------------------ schedule
    def alpha_at(self, t: float) -> float:
        return alpha_schedule(t, alpha_final=self.alpha_final, t1=self.t1, t2=self.t2, shape=self.shape)

    def current_t(self, trainer: pl.Trainer, batch_idx: int = 0) -> float:
        if self.unit == "step":
            return trainer.global_step
        t = trainer.current_epoch
        if self.fractional:
            n = trainer.num_training_batches
            if isinstance(n, int | float) and math.isfinite(n) and n > 0:
                return t + batch_idx / n
        return t

    def _apply(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch_idx: int) -> float:
        t = self.current_t(trainer, batch_idx)
        alpha = self.alpha_at(t)
        pl_module.set_penalty_weight(alpha)
        self.last_t, self.last_alpha = t, alpha
        return alpha

    # ------------------------------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not isinstance(pl_module, PenaltyWeighted):
            raise TypeError(
                f"AlphaRamp needs a module with set_penalty_weight(alpha) (sketchquant.core.hooks."
                f"PenaltyWeighted); {type(pl_module).__name__} has none"
            )
        self._apply(trainer, pl_module, 0)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        alpha = self._apply(trainer, pl_module, batch_idx)
        if self.log:
            pl_module.log(
                "train/alpha",
                alpha,
                on_step=True,
                on_epoch=False,
                prog_bar=False,
                logger=bool(trainer.loggers),
            )

    # ------------------------------------------------------------------------------------------ state
    def _params(self) -> dict[str, Any]:
        return {
            "alpha_final": self.alpha_final,
            "t1": self.t1,
            "t2": self.t2,
            "shape": self.shape,
            "unit": self.unit,
            "fractional": self.fractional,
        }

    def state_dict(self) -> dict[str, Any]:
        return {**self._params(), "last_t": self.last_t, "last_alpha": self.last_alpha}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        params = self._params()
        restored = {k: state_dict[k] for k in params if k in state_dict}
        changed = {k: (params[k], v) for k, v in restored.items() if params[k] != v}
        if changed:
            detail = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            warnings.warn(f"AlphaRamp: restoring the checkpoint's schedule ({detail})", stacklevel=2)
        alpha_schedule(
            restored.get("t1", self.t1),
            alpha_final=restored.get("alpha_final", self.alpha_final),
            t1=restored.get("t1", self.t1),
            t2=restored.get("t2", self.t2),
            shape=restored.get("shape", self.shape),
        )
        for key, value in restored.items():
            setattr(self, key, float(value) if key == "alpha_final" else value)
        self.last_t = state_dict.get("last_t")
        self.last_alpha = state_dict.get("last_alpha")
