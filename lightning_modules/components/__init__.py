"""Pure torch/timm parts of the LightningModules (no Lightning import anywhere in this package).

Import-light on purpose: importing this package imports nothing heavy. Names are resolved lazily on first
access (``from lightning_modules.components import QuantizationEncoder`` works), or import the submodule
directly (``from lightning_modules.components.irelu import irelu``).
"""

from __future__ import annotations

from sketchquant.core.lazy import lazy_exports

# name -> submodule that defines it (method A: iReLU, window pooling, quantization encoder)
_LAZY = {
    "irelu": "irelu",
    "IReLU": "irelu",
    "to_codes": "irelu",
    "quantization_loss": "irelu",
    "check_bits": "irelu",
    "WindowPooling": "windows",
    "PerWindowLinear": "quant_encoder",
    "QuantizationEncoder": "quant_encoder",
    "QuantOutput": "quant_encoder",
    "classification_loss": "quant_encoder",
    # method B: backbones with ImageNet weights, the zero-shot net, its losses
    "create_backbone": "backbones",
    "BackboneInfo": "backbones",
    "get_backbone_info": "backbones",
    "map_state_dict_by_position": "backbones",
    "SketchNet": "sketch_net",
    "SketchNetOutput": "sketch_net",
    "FrozenTeacher": "sketch_net",
    "make_teacher": "sketch_net",
    "svd_split_classifier": "sketch_net",
    "distillation_loss": "sbir_losses",
    "distribution_alignment_loss": "sbir_losses",
    "sbir_loss": "sbir_losses",
}


__getattr__, __dir__ = lazy_exports(__name__, {name: f".{mod}" for name, mod in _LAZY.items()})
__all__ = sorted(_LAZY)
