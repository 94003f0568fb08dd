"""Structured configs: the schema, composition of config groups, overrides, and loud errors.

A run's config is composed like lightning-hydra-template, without Hydra:

1. ``configs/experiment/<name>.yaml`` names its group choices under ``defaults:``
   (``trainer``, ``logger``, ``data``, ``model``) and may override any key in its body;
2. each chosen ``configs/<group>/<choice>.yaml`` fills its section;
3. the experiment body goes on top of the groups (Hydra's ``_self_`` last);
4. command-line ``group=choice`` swaps a group file, ``a.b=value`` (an OmegaConf dotlist) goes on top.

Every section is checked against a dataclass before anything runs: an unknown key, a wrong type, a
missing required value or an unknown group choice raises :class:`ConfigError` naming the dotted key,
the bad value and what is allowed (with "did you mean" suggestions).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

GROUPS = ("trainer", "logger", "data", "model")


class ConfigError(ValueError):
    """A config problem found before any work starts. The message names key, value and what is allowed."""


# --------------------------------------------------------------------------------------------------
# schema


@dataclass
class TrainerConfig:
    """Passed through to ``pytorch_lightning.Trainer`` (same names)."""

    max_epochs: int = 10
    max_steps: int = -1
    accelerator: str = "auto"
    devices: Any = 1  # int, list of ids, or "auto"
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ddp_spawn | ddp_fork | ...
    precision: str = "32-true"
    deterministic: Any = False  # bool or "warn"
    benchmark: bool | None = None
    limit_train_batches: Any = 1.0  # float fraction or int count
    limit_val_batches: Any = 1.0
    limit_test_batches: Any = 1.0
    num_sanity_val_steps: int = 2
    check_val_every_n_epoch: int = 1
    log_every_n_steps: int = 10
    gradient_clip_val: float | None = None
    accumulate_grad_batches: int = 1
    sync_batchnorm: bool = False
    enable_progress_bar: bool = True


@dataclass
class LoggerConfig:
    """CSV is always written; ``name`` adds a dashboard logger."""

    name: str = "csv"  # csv | wandb | tensorboard
    project: str = "sketchquant"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    log_model: bool = False
    offline: bool | None = None  # wandb: None = offline unless WANDB_MODE=online


@dataclass
class SketchPhotoDataConfig:
    """:class:`datamodules.SketchPhotoDataModule` (ZS-SBIR). ``batch_size`` is per device."""

    kind: str = "sketch_photo"
    root: str = MISSING
    layout: str = "folder"  # folder | sake
    unseen_classes: Any = None  # None (<root>/unseen_classes.txt) | shipped list name | path | list
    sake_sketch_version: str = "sketch_tx_000000000000_ready"
    sake_photo_version: str = "all_photo"
    sake_split_dir: str | None = None
    val_fraction: float = 0.2
    split_seed: int = 0
    image_size: int | None = None  # None: the backbone's timm data config
    mean: list[float] | None = None
    std: list[float] | None = None
    interpolation: str = "bilinear"
    augment: bool = True
    hflip: float = 0.5
    affine_degrees: float = 10.0
    affine_translate: float = 0.1
    affine_scale: list[float] = field(default_factory=lambda: [0.9, 1.1])
    batch_size: int = 48
    sketch_fraction: float = 1 / 3
    num_workers: int = 2
    pin_memory: bool = False
    persistent_workers: bool = True
    on_bad_image: str = "skip"  # skip | error
    auto_generate: bool = False
    generator: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImageDataConfig:
    """:class:`datamodules.ImageDataModule` (method A, hashing-style splits). ``batch_size`` is per device."""

    kind: str = "images"
    root: str = MISSING
    layout: str = "csv"  # csv | folder
    train_list: str = "train.csv"
    query_list: str = "query.csv"
    database_list: str = "database.csv"
    multi_label: bool | None = None
    image_size: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    interpolation: str = "bilinear"
    augment: bool = True
    hflip: float = 0.5
    affine_degrees: float = 10.0
    affine_translate: float = 0.1
    affine_scale: list[float] = field(default_factory=lambda: [0.9, 1.1])
    batch_size: int = 64
    num_workers: int = 2
    pin_memory: bool = False
    persistent_workers: bool = True
    on_bad_image: str = "skip"
    auto_generate: bool = False
    generator: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-4
    weight_decay: float = 5e-4
    momentum: float = 0.9
    schedule: str = "exp"  # exp: lr * final_factor^(epoch/max_epochs) (SAKE) | cosine | none
    final_factor: float = 1e-3
    head_lr_mult: float = 1.0  # lr multiplier of the new layers (embedding, heads); 1 = SAKE


@dataclass
class ZeroShotModelConfig:
    """Method B (SPEC §B)."""

    name: str = "zs_sbir"
    backbone: str = "tf_efficientnet_lite0"
    weights: str = "auto"  # auto | none | hub | efficientnet_lite0 | /path/to/weights
    embed_dim: int = 512
    lambda_kd: float = 1.0
    lambda_da: float = 0.1
    tau: float = 1.0
    head_init: str = "svd"  # svd | random
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class AlphaConfig:
    """α(t) ramp of SPEC §A."""

    final: float = 1.0
    t1: float = 1.0
    t2: float = 5.0
    shape: str = "linear"  # linear | sigmoid
    unit: str = "epoch"  # epoch | step


@dataclass
class QuantModelConfig:
    """Method A (SPEC §A)."""

    name: str = "quantization"
    backbone: str = "tf_efficientnet_lite0"
    weights: str = "auto"
    feature_stage: int = -1
    window: str = "sliding"  # sliding | stripes | global
    kernel: list[int] = field(default_factory=lambda: [2, 2])
    stride: list[int] = field(default_factory=lambda: [1, 1])
    num_stripes: int = 4
    dim: int = 64
    bits: int = 8
    per_window_classifier: bool = False
    alpha: AlphaConfig = field(default_factory=AlphaConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=1e-4))


@dataclass
class EvalConfig:
    """Retrieval evaluation (SPEC §C) run by :class:`callbacks.RetrievalEvaluator`."""

    protocol: str = "sbir"  # sbir | hashing
    map_at: list[Any] = field(default_factory=lambda: ["all", 200])
    p_at: list[int] = field(default_factory=lambda: [100, 200])
    ap: str = "voc"  # voc | standard
    metric: str = "l2"  # l2 | ip
    normalize: bool = True
    memory_budget_mb: int = 512
    prototypes: bool = True  # method B test: also prototype and fused gallery features
    pq_m: int = 2
    pq_k: int = 32
    fusion: str = "feature"  # feature | distance
    fusion_lambda: float = 0.2
    grid: bool = True
    grid_queries: int = 4
    grid_topk: int = 10


@dataclass
class RunConfig:
    experiment: str = MISSING
    name: str | None = None
    seed: int = 0
    run_dir: str = "runs"
    resume: str | None = None  # auto | /path/to/last.ckpt
    ckpt: str | None = None  # evaluate: the checkpoint to test
    monitor: str = "val/map_all"
    monitor_mode: str = "max"
    save_top_k: int = 1
    test_after_fit: bool = True
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    data: Any = None
    model: Any = None
    eval: EvalConfig = field(default_factory=EvalConfig)


DATA_SCHEMAS: dict[str, type] = {"sketch_photo": SketchPhotoDataConfig, "images": ImageDataConfig}
MODEL_SCHEMAS: dict[str, type] = {"zs_sbir": ZeroShotModelConfig, "quantization": QuantModelConfig}
# sections whose schema is chosen by a discriminating key
_VARIANT_SECTIONS = {"data": ("kind", DATA_SCHEMAS), "model": ("name", MODEL_SCHEMAS)}

# allowed values of string options (checked after merging; a typo fails before any work)
CHOICES: dict[str, tuple] = {
    "logger.name": ("csv", "wandb", "tensorboard"),
    "monitor_mode": ("max", "min"),
    "data.layout": ("folder", "sake", "csv"),
    "data.on_bad_image": ("skip", "error"),
    "model.window": ("sliding", "stripes", "global"),
    "model.alpha.shape": ("linear", "sigmoid"),
    "model.alpha.unit": ("epoch", "step"),
    "model.optim.name": ("adam", "adamw", "sgd"),
    "model.optim.schedule": ("exp", "cosine", "none"),
    "model.head_init": ("svd", "random"),
    "eval.protocol": ("sbir", "hashing"),
    "eval.ap": ("voc", "standard"),
    "eval.metric": ("l2", "ip"),
    "eval.fusion": ("feature", "distance"),
}


# --------------------------------------------------------------------------------------------------
# where configs live


def config_dir() -> Path:
    """``$SKETCHQUANT_CONFIG_DIR`` or the repository's ``configs/``."""
    env = os.environ.get("SKETCHQUANT_CONFIG_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "configs"
    if not path.is_dir():
        raise ConfigError(
            f"config folder {path} not found (set SKETCHQUANT_CONFIG_DIR to your configs/ folder)"
        )
    return path


def list_choices(group: str, root: Path | None = None) -> list[str]:
    folder = (root or config_dir()) / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _suggest(word: str, candidates) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=3, cutoff=0.5)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _load_yaml(path: Path) -> dict:
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as err:  # yaml syntax errors and the like
        raise ConfigError(f"cannot read config file {path}: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top, got {type(data).__name__}")
    return data


def _load_choice(group: str, choice: str, root: Path, origin: str) -> dict:
    available = list_choices(group, root)
    if choice not in available:
        raise ConfigError(
            f"unknown choice {choice!r} for config group '{group}' ({origin}){_suggest(choice, available)} "
            f"available: {', '.join(available) or '(none)'}"
        )
    return _load_yaml(root / group / f"{choice}.yaml")


# --------------------------------------------------------------------------------------------------
# overrides


def parse_overrides(overrides: list[str]) -> tuple[dict[str, str], list[str]]:
    """Split ``group=choice`` from ``a.b=value`` overrides. Anything else is an error naming it."""
    choices: dict[str, str] = {}
    dotlist: list[str] = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. trainer.max_epochs=3)")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        if key in GROUPS:
            choices[key] = value.strip()
        else:
            dotlist.append(f"{key}={value}")
    return choices, dotlist


def _dotlist_to_dict(dotlist: list[str]) -> dict:
    if not dotlist:
        return {}
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(dotlist), resolve=False)
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot parse overrides {dotlist}: {err}") from err


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------------------------------
# validation


def _schema_fields(schema) -> dict[str, Any]:
    return {f.name: f for f in fields(schema)}


def _check_keys(schema, raw: dict, prefix: str) -> None:
    """Unknown keys anywhere below ``schema``: name the dotted path and suggest the allowed keys."""
    known = _schema_fields(schema)
    for key, value in raw.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in known:
            raise ConfigError(
                f"unknown config key '{path}' (value {value!r}){_suggest(key, known)} "
                f"allowed keys{' under ' + repr(prefix) if prefix else ''}: {', '.join(known)}"
            )
        default = known[key].default_factory() if callable(known[key].default_factory) else None
        if is_dataclass(default) and isinstance(value, dict):
            _check_keys(type(default), value, path)


def _typed(schema, raw: dict, prefix: str) -> DictConfig:
    _check_keys(schema, raw, prefix)
    base = OmegaConf.structured(schema)
    try:
        return OmegaConf.merge(base, raw)
    except OmegaConfBaseException as err:
        sub = getattr(err, "full_key", None) or ""
        key = ".".join(k for k in (prefix, sub) if k)
        value = getattr(err, "value", None)
        msg = str(getattr(err, "msg", err)).split("\n")[0]
        raise ConfigError(f"bad value for config key '{key}' (value {value!r}): {msg}") from err


def _variant(section: str, raw: Any) -> DictConfig:
    disc, schemas = _VARIANT_SECTIONS[section]
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config section '{section}' is missing: choose one with {section}=<choice> "
            f"(choices: {', '.join(list_choices(section)) or '(none)'})"
        )
    kind = raw.get(disc)
    if kind not in schemas:
        raise ConfigError(
            f"config key '{section}.{disc}' is {kind!r}{_suggest(kind, schemas)} expected one of: "
            f"{', '.join(schemas)}"
        )
    return _typed(schemas[kind], raw, section)


def _check_choices(cfg: DictConfig) -> None:
    for key, allowed in CHOICES.items():
        if not allowed:
            continue
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and value not in allowed:
            raise ConfigError(
                f"config key '{key}' is {value!r}{_suggest(value, allowed)} expected one of: {', '.join(allowed)}"
            )
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            "missing required config value(s): "
            + ", ".join(missing)
            + f" (set on the command line, e.g. {missing[0]}=...)"
        )
    if cfg.data is not None and cfg.model is not None:
        pairs = {"zs_sbir": "sketch_photo", "quantization": "images"}
        want = pairs.get(cfg.model.name)
        if want and cfg.data.kind != want:
            raise ConfigError(
                f"model '{cfg.model.name}' needs data of kind '{want}', but data.kind is '{cfg.data.kind}'"
            )


def validate(raw: dict) -> DictConfig:
    """Turn a raw nested dict into a typed, checked config (the single entry point for checking)."""
    raw = dict(raw)
    sections = {s: raw.pop(s, None) for s in _VARIANT_SECTIONS}
    cfg = _typed(RunConfig, raw, "")
    for section, value in sections.items():
        typed = _variant(section, value)
        OmegaConf.set_struct(cfg, False)
        cfg[section] = typed
        OmegaConf.set_struct(cfg, True)
    _check_choices(cfg)
    return cfg


# --------------------------------------------------------------------------------------------------
# composition


def compose(experiment: str, overrides: list[str] | None = None, root: Path | None = None) -> DictConfig:
    """Compose ``experiment`` + its group choices + command-line ``overrides`` into a checked config."""
    root = root or config_dir()
    experiments = list_choices("experiment", root)
    if experiment not in experiments:
        raise ConfigError(
            f"unknown experiment {experiment!r}{_suggest(experiment, experiments)} "
            f"available: {', '.join(experiments) or '(none)'}"
        )
    body = _load_yaml(root / "experiment" / f"{experiment}.yaml")
    defaults = body.pop("defaults", {}) or {}
    if isinstance(defaults, list):  # hydra style [{trainer: cpu}, ...]
        merged: dict = {}
        for item in defaults:
            if not isinstance(item, dict):
                raise ConfigError(
                    f"experiment {experiment}: 'defaults' entries must be group: choice, got {item!r}"
                )
            merged.update(item)
        defaults = merged
    for group in defaults:
        if group not in GROUPS:
            raise ConfigError(
                f"experiment {experiment}: unknown config group {group!r} in defaults{_suggest(group, GROUPS)} "
                f"groups: {', '.join(GROUPS)}"
            )
    cli_choices, dotlist = parse_overrides(list(overrides or []))
    raw: dict = {}
    for group in GROUPS:
        choice = cli_choices.get(group, defaults.get(group))
        if choice is None:
            continue
        origin = "command line" if group in cli_choices else f"experiment/{experiment}.yaml defaults"
        raw[group] = _load_choice(group, str(choice), root, origin)
    raw = _deep_merge(raw, body)
    raw = _deep_merge(raw, _dotlist_to_dict(dotlist))
    raw["experiment"] = experiment
    return validate(raw)


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def from_container(data: dict, overrides: list[str] | None = None) -> DictConfig:
    """Re-check a saved config (``config.yaml`` or a checkpoint's copy) with optional overrides on top."""
    cli_choices, dotlist = parse_overrides(list(overrides or []))
    if cli_choices:
        raise ConfigError(
            f"group choices ({', '.join(f'{k}={v}' for k, v in cli_choices.items())}) cannot be changed "
            "when evaluating a checkpoint; override single keys instead (e.g. data.root=...)"
        )
    return validate(_deep_merge(data, _dotlist_to_dict(dotlist)))


def as_kwargs(node: DictConfig | ListConfig | Any, drop: tuple[str, ...] = ()) -> Any:
    """Plain python containers for passing a section to a constructor."""
    if isinstance(node, DictConfig | ListConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if isinstance(node, dict):
        return {k: v for k, v in node.items() if k not in drop}
    return node
