"""LightningModules (method A: :class:`QuantizationModule`, method B: :class:`ZeroShotSketchModule`) and,
under ``components/``, their pure-torch parts.

Names resolve lazily, so ``import lightning_modules.components.irelu`` does not import Lightning."""

from __future__ import annotations

import importlib

_LAZY = {
    "irelu": "lightning_modules.components.irelu",
    "QuantizationEncoder": "lightning_modules.components.quant_encoder",
    "SketchNet": "lightning_modules.components.sketch_net",
    "QuantizationModule": "lightning_modules.quantization",
    "ZeroShotSketchModule": "lightning_modules.zero_shot_sketch",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
