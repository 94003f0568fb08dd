"""The method registry: one record per method, and the config entry points that use it.

A record says everything the application needs to run a method: its LightningModule, DataModule and
search network (by import path, loaded only when a command builds one), the config dataclasses of its
``model`` and ``data`` sections, the callbacks only it uses, and the method's facts: its metric protocol,
the features it reports and stores, and the domains of its queries and gallery. Nothing else in the
project compares method names or spells these facts: adding a method is one :class:`Method` record in
:data:`METHODS` plus its classes (and a ``configs/model/<name>.yaml``).

This module imports no torch: ``sketchquant config`` and ``list`` read the schemas through it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from sketchquant.callbacks.config import EvalConfig
from sketchquant.core import config as core_config
from sketchquant.core.batch import FeatureSets
from sketchquant.core.config import ConfigError
from sketchquant.core.lazy import load_object
from sketchquant.datamodules.config import ImageDataConfig, SketchPhotoDataConfig
from sketchquant.lightning_modules.config import QuantModelConfig, ZeroShotModelConfig

__all__ = ["Method", "METHODS", "SCHEMAS", "method_of", "compose", "from_container"]


@dataclass(frozen=True)
class Method:
    """One method. Class fields are import paths (``"package.module:Name"``); :meth:`load` imports one.

    ``data_facts(cfg, datamodule)`` gives the module's constructor arguments that come from the data
    (class count, ...); ``callbacks`` the callbacks only this method uses, each ``(import path, the model
    config key whose section is its constructor argument, or None)``."""

    name: str
    module: str
    datamodule: str
    #: ``(model config dataclass, data facts dict) -> torch.nn.Module`` that encodes images for search
    #: (no Lightning), and the state-dict prefix of its weights inside the LightningModule
    network: str
    network_prefix: str
    model_schema: type
    data_schema: type
    data_facts: Callable[[DictConfig, Any], dict[str, Any]]
    protocol: str
    features: FeatureSets
    query_domain: str
    gallery_domain: str
    callbacks: tuple[tuple[str, str | None], ...] = ()
    #: evaluation settings this method's features need under the experiment's ``eval`` section
    eval_defaults: dict[str, Any] = field(default_factory=dict)
    #: False when the DataModule's training sampler shards by rank itself
    use_distributed_sampler: bool = True
    #: its features are integer codes (``encode`` / ``index`` export them)
    codes: bool = False

    @property
    def data_kind(self) -> str:
        return self.data_schema.kind

    def load(self, what: str) -> Any:
        """The class (or function) a field names: ``load("module")``, ``load("network")``, ..."""
        return load_object(getattr(self, what))


def _zs_facts(cfg: DictConfig, dm: Any) -> dict[str, Any]:
    return {"num_classes": int(dm.num_seen_classes)}


def _quant_facts(cfg: DictConfig, dm: Any) -> dict[str, Any]:
    return {
        "num_classes": int(dm.num_classes),
        "multi_label": bool(dm.multi_label),
        "image_size": dm.image_size,
    }


METHODS: dict[str, Method] = {
    "zs_sbir": Method(
        name="zs_sbir",
        module="sketchquant.lightning_modules.zero_shot_sketch:ZeroShotSketchModule",
        datamodule="sketchquant.datamodules.sketch_photo:SketchPhotoDataModule",
        network="sketchquant.lightning_modules.components.sketch_net:sketch_encoder",
        network_prefix="net.",
        model_schema=ZeroShotModelConfig,
        data_schema=SketchPhotoDataConfig,
        data_facts=_zs_facts,
        protocol="sbir",
        features=FeatureSets(
            embeddings=("raw",), unnamed="raw", derived=("proto", "fused"), gallery_default="fused"
        ),
        query_domain="sketch",
        gallery_domain="photo",
        callbacks=(("sketchquant.callbacks.teacher_distillation:TeacherDistillation", None),),
        eval_defaults={"prototypes": True},
        use_distributed_sampler=False,  # MixedDomainSampler shards by rank itself
    ),
    "quantization": Method(
        name="quantization",
        module="sketchquant.lightning_modules.quantization:QuantizationModule",
        datamodule="sketchquant.datamodules.images:ImageDataModule",
        network="sketchquant.lightning_modules.components.quant_encoder:code_encoder",
        network_prefix="encoder.",
        model_schema=QuantModelConfig,
        data_schema=ImageDataConfig,
        data_facts=_quant_facts,
        protocol="hashing",
        features=FeatureSets(embeddings=("codes", "float"), gallery=("codes",), codes=("codes",)),
        query_domain="image",
        gallery_domain="image",
        callbacks=(("sketchquant.callbacks.alpha_ramp:AlphaRamp", "alpha"),),
        eval_defaults={"normalize": False, "prototypes": False},  # codes are compared as integers
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


def all_gallery_features() -> list[str]:
    """Every feature kind some method's gallery stores (the ``--features`` choices)."""
    return list(dict.fromkeys(f for m in METHODS.values() for f in m.features.gallery))


def _with_eval_defaults(raw: dict) -> dict:
    model = raw.get("model")
    method = METHODS.get(model.get("name")) if isinstance(model, dict) else None
    if method is None:
        return raw
    defaults = {"protocol": method.protocol, **method.eval_defaults}
    return {**raw, "eval": {**defaults, **(raw.get("eval") or {})}}


def compose(experiment: str, overrides: list[str] | None = None) -> DictConfig:
    """:func:`sketchquant.core.config.compose` with the registry's schemas and evaluation defaults."""
    return core_config.compose(experiment, SCHEMAS, overrides, prepare=_with_eval_defaults)


def from_container(data: dict, overrides: list[str] | None = None) -> DictConfig:
    """Re-check a saved config (``config.yaml`` or a checkpoint's copy) with ``overrides`` on top."""
    return core_config.from_container(data, SCHEMAS, overrides)
