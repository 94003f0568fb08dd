"""LightningModules (method A: :class:`QuantizationModule`, method B: :class:`ZeroShotSketchModule`) and,
under ``components/``, their pure-torch parts.

Names resolve lazily, so ``import sketchquant.lightning_modules.components.irelu`` does not import Lightning."""

from __future__ import annotations

# one name only (two copies of a class break isinstance and registries)
if __name__ != "sketchquant.lightning_modules":
    raise ImportError(f"import this folder as sketchquant.lightning_modules, not as {__name__}")

from sketchquant.core.lazy import lazy_exports

_LAZY = {
    "irelu": "sketchquant.lightning_modules.components.irelu",
    "QuantizationEncoder": "sketchquant.lightning_modules.components.quant_encoder",
    "SketchNet": "sketchquant.lightning_modules.components.sketch_net",
    "QuantizationModule": "sketchquant.lightning_modules.quantization",
    "ZeroShotSketchModule": "sketchquant.lightning_modules.zero_shot_sketch",
}
__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
