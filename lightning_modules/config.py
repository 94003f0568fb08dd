"""The config dataclasses of the LightningModules (the ``model`` section), torch-free: ``sketchquant config``
and ``list`` read them without importing torch. Each field's default is the one place that default is
written: the modules take these dataclasses as their constructor argument, and the files under
``configs/model/`` state only what they change."""

from __future__ import annotations

from dataclasses import dataclass, field

from sketchquant.core.hooks import AlphaConfig
from sketchquant.core.schema import choice

__all__ = ["OptimConfig", "QuantModelConfig", "ZeroShotModelConfig"]


@dataclass
class OptimConfig:
    """Optimizer and per-epoch schedule (SAKE's by default: Adam 1e-4, weight decay 5e-4, ``exp``)."""

    name: str = choice("adam", "adamw", "sgd")
    lr: float = 1e-4
    weight_decay: float = 5e-4
    momentum: float = 0.9
    schedule: str = choice("exp", "cosine", "none")  # exp: lr * final_factor^(epoch/max_epochs) (SAKE)
    final_factor: float = 1e-3
    head_lr_mult: float = 1.0  # lr multiplier of the new layers (embedding, heads); 1 = SAKE


@dataclass
class QuantModelConfig:
    """Method A (docs/method.md §A): feature map → sliding windows → per-window FC+ReLU → iReLU codes."""

    name: str = "quantization"
    backbone: str = "tf_efficientnet_lite0"
    weights: str = "auto"  # auto | none | hub | efficientnet_lite0 | /path/to/weights
    feature_stage: int = -2  # at 64 px a 4x4 map (the last stage is only 2x2)
    window: str = choice("sliding", "stripes", "global")
    kernel: list[int] = field(default_factory=lambda: [3, 3])  # 3x3 windows, stride 1 on 4x4: 4 windows
    stride: list[int] = field(default_factory=lambda: [1, 1])
    num_stripes: int = 4
    dim: int = 48  # bytes per window at 8 bits (4 windows: 192 B per image)
    bytes_per_image: int | None = None  # d = bytes_per_image / P when set (equal bytes across window layouts)
    bits: int = 8
    per_window_classifier: bool = False
    alpha: AlphaConfig = field(default_factory=AlphaConfig)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=1e-4, schedule="cosine", final_factor=1e-2)
    )


@dataclass
class ZeroShotModelConfig:
    """Method B (docs/method.md §B): one backbone, a 512-d embedding, CE + λ_kd·KD + λ_da·DA."""

    name: str = "zs_sbir"
    backbone: str = "tf_efficientnet_lite0"
    weights: str = "auto"  # auto | none | hub | efficientnet_lite0 | /path/to/weights
    embed_dim: int = 512
    lambda_kd: float = 1.0
    lambda_da: float = 0.1
    tau: float = 1.0
    head_init: str = choice("svd", "random")
    freeze_bn: bool = False  # keep the trunk's BatchNorm statistics (ImageNet's) while fine-tuning
    #: the share of the pretrained trunk's parameter tensors, from the input side, that stay as they are
    #: (their BatchNorm statistics too): early layers are generic, so small data trains only the later ones
    frozen_trunk: float = 0.0
    #: WiSE-FT: the tested and saved weights are ``(1 − α)·pretrained + α·fine-tuned`` (trunk, embedding,
    #: ImageNet head); 1 = plain fine-tuning (SAKE), 0.5 = the published default (docs/method.md §B)
    weight_ensemble: float = 1.0
    #: LP-FT: the first epochs train only the two heads on the pretrained features (no gradient into trunk
    #: and embedding), so the randomly initialised seen-class head does not distort them (0 = off)
    head_warmup_epochs: int = 0
    #: the seen-class head: ``linear`` (``W f + b``, SAKE) or ``cosine`` (normalised softmax, Zhai & Wu 2019:
    #: ``cos(f, w_k) / T``, so the classes are learned in the metric retrieval uses — L2-normalised features)
    classifier: str = choice("linear", "cosine")
    classifier_temperature: float = 0.05  # T of the cosine head (Zhai & Wu's published value)
    optim: OptimConfig = field(default_factory=OptimConfig)
