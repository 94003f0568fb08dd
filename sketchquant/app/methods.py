"""The method registry: one record per method, and the config entry points that use it.

A record says everything the application needs to run a method: its LightningModule and DataModule
classes, the config dataclasses of its ``model`` and ``data`` sections, the callbacks only it uses and
its default evaluation. Nothing else in the project compares method names: adding a method is one
:class:`Method` record in :data:`METHODS` plus its classes (and a ``configs/model/<name>.yaml``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig

from sketchquant.callbacks import AlphaRamp, TeacherDistillation
from sketchquant.callbacks.retrieval_evaluator import EvalConfig
from sketchquant.core import config as core_config
from sketchquant.core.config import ConfigError, as_kwargs
from sketchquant.datamodules.images import ImageDataConfig, ImageDataModule
from sketchquant.datamodules.sketch_photo import SketchPhotoDataConfig, SketchPhotoDataModule
from sketchquant.datamodules.transforms import resolve_data_config
from sketchquant.lightning_modules import QuantizationModule, ZeroShotSketchModule
from sketchquant.lightning_modules.quantization import QuantModelConfig
from sketchquant.lightning_modules.zero_shot_sketch import ZeroShotModelConfig

__all__ = ["Method", "METHODS", "SCHEMAS", "method_of", "compose", "from_container"]


@dataclass(frozen=True)
class Method:
    """One method. ``module_kwargs(cfg, datamodule)`` gives the module's constructor arguments that come
    from the data (class count, ...); ``callbacks(cfg)`` the callbacks only this method uses."""

    name: str
    module: type[pl.LightningModule]
    datamodule: type[pl.LightningDataModule]
    model_schema: type
    data_schema: type
    module_kwargs: Callable[[DictConfig, Any], dict[str, Any]]
    callbacks: Callable[[DictConfig], list[pl.Callback]] = lambda cfg: []
    #: model config keys the module does not take (owned by a callback)
    callback_keys: tuple[str, ...] = ()
    #: evaluation defaults under the experiment's ``eval`` section
    eval_defaults: dict[str, Any] = field(default_factory=dict)
    #: False when the DataModule's training sampler shards by rank itself
    use_distributed_sampler: bool = True
    #: its features are integer codes (``encode`` / ``index`` export them)
    codes: bool = False

    @property
    def data_kind(self) -> str:
        return self.data_schema.kind


def _zs_kwargs(cfg: DictConfig, dm: Any) -> dict[str, Any]:
    return {"num_classes": dm.num_seen_classes}


def _quant_kwargs(cfg: DictConfig, dm: Any) -> dict[str, Any]:
    size = getattr(dm, "image_size", None) or cfg.data.image_size
    return {
        "num_classes": dm.num_classes,
        "multi_label": bool(dm.multi_label),
        "image_size": int(size or resolve_data_config(cfg.model.backbone)["image_size"]),
    }


def _alpha_ramp(cfg: DictConfig) -> list[pl.Callback]:
    a = cfg.model.alpha
    return [AlphaRamp(alpha_final=a.final, t1=a.t1, t2=a.t2, shape=a.shape, unit=a.unit)]


METHODS: dict[str, Method] = {
    "zs_sbir": Method(
        name="zs_sbir",
        module=ZeroShotSketchModule,
        datamodule=SketchPhotoDataModule,
        model_schema=ZeroShotModelConfig,
        data_schema=SketchPhotoDataConfig,
        module_kwargs=_zs_kwargs,
        callbacks=lambda cfg: [TeacherDistillation()],
        eval_defaults={"protocol": "sbir", "prototypes": True},
        use_distributed_sampler=False,  # MixedDomainSampler shards by rank itself
    ),
    "quantization": Method(
        name="quantization",
        module=QuantizationModule,
        datamodule=ImageDataModule,
        model_schema=QuantModelConfig,
        data_schema=ImageDataConfig,
        module_kwargs=_quant_kwargs,
        callbacks=_alpha_ramp,
        callback_keys=("alpha",),
        eval_defaults={"protocol": "hashing", "normalize": False, "prototypes": False},
        codes=True,
    ),
}

SCHEMAS = core_config.Schemas(
    sections={"eval": EvalConfig},
    variants={
        "model": ("name", {m.name: m.model_schema for m in METHODS.values()}),
        "data": ("kind", {m.data_kind: m.data_schema for m in METHODS.values()}),
    },
    pairs={m.name: m.data_kind for m in METHODS.values()},
)


def method_of(cfg: DictConfig | str) -> Method:
    """The record of ``cfg.model.name`` (or of a name)."""
    name = cfg if isinstance(cfg, str) else cfg.model.name
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(
            f"unknown method {name!r}{core_config.suggest(name, METHODS)} known: {', '.join(METHODS)}"
        ) from None


def _with_eval_defaults(raw: dict) -> dict:
    model = raw.get("model")
    method = METHODS.get(model.get("name")) if isinstance(model, dict) else None
    if method is None:
        return raw
    return {**raw, "eval": {**method.eval_defaults, **(raw.get("eval") or {})}}


def compose(experiment: str, overrides: list[str] | None = None) -> DictConfig:
    """:func:`sketchquant.core.config.compose` with the registry's schemas and evaluation defaults."""
    return core_config.compose(experiment, SCHEMAS, overrides, prepare=_with_eval_defaults)


def from_container(data: dict, overrides: list[str] | None = None) -> DictConfig:
    """Re-check a saved config (``config.yaml`` or a checkpoint's copy) with ``overrides`` on top."""
    return core_config.from_container(data, SCHEMAS, overrides)


def module_kwargs(cfg: DictConfig, datamodule: Any) -> dict[str, Any]:
    """Constructor arguments of ``cfg``'s LightningModule: the model section (minus the keys its callbacks
    own), the data facts of ``datamodule`` and ``max_epochs`` for the schedule."""
    method = method_of(cfg)
    kwargs = as_kwargs(cfg.model, drop=("name", *method.callback_keys))
    return {**kwargs, **method.module_kwargs(cfg, datamodule), "max_epochs": cfg.trainer.max_epochs}
