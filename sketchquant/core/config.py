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
from collections.abc import Callable, Iterator
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .schema import (  # noqa: F401  (re-exported: the schema is part of the config API)
    GROUPS,
    CheckpointConfig,
    ConfigError,
    LoggerConfig,
    RunConfig,
    Schemas,
    TrainerConfig,
    choice,
)

# --------------------------------------------------------------------------------------------------
# where configs live


#: the config groups that ship with the package (in a checkout: a link to the repository's configs/)
SHIPPED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def config_dirs() -> list[Path]:
    """Where configs are looked up, first match wins: ``$SKETCHQUANT_CONFIG_DIR`` (``--config-dir``; your
    own experiments, groups and sweeps), then the shipped ``configs/``, so a file of your own can name
    the shipped group choices in its ``defaults``."""
    env = os.environ.get("SKETCHQUANT_CONFIG_DIR")
    dirs = []
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise ConfigError(f"config folder {path} (SKETCHQUANT_CONFIG_DIR / --config-dir) is not a folder")
        dirs.append(path)
    if SHIPPED_CONFIGS.is_dir() and SHIPPED_CONFIGS.resolve() not in {d.resolve() for d in dirs}:
        dirs.append(SHIPPED_CONFIGS)
    if not dirs:
        raise ConfigError(f"no config folder: {SHIPPED_CONFIGS} is missing; set SKETCHQUANT_CONFIG_DIR")
    return dirs


def config_file(group: str, name: str) -> Path | None:
    """``<group>/<name>.yaml`` from the first config folder that has it (see :func:`config_dirs`)."""
    for folder in config_dirs():
        path = folder / group / f"{name}.yaml"
        if path.is_file():
            return path
    return None


def list_choices(group: str) -> list[str]:
    """The choices of ``group`` over every config folder."""
    names = {
        p.stem
        for folder in config_dirs()
        if (folder / group).is_dir()
        for p in (folder / group).glob("*.yaml")
    }
    return sorted(names)


def suggest(word: str, candidates) -> str:
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


def _load_choice(group: str, name: str, origin: str) -> dict:
    path = config_file(group, name)
    if path is None:
        available = list_choices(group)
        raise ConfigError(
            f"unknown choice {name!r} for config group '{group}' ({origin}){suggest(name, available)} "
            f"available: {', '.join(available) or '(none)'}"
        )
    return _load_yaml(path)


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


def dotlist_to_dict(dotlist: list[str]) -> dict:
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
                f"unknown config key '{path}' (value {value!r}){suggest(key, known)} "
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


def _variant(section: str, raw: Any, schemas: Schemas) -> DictConfig:
    disc, options = schemas.variants[section]
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config section '{section}' is missing: choose one with {section}=<choice> "
            f"(choices: {', '.join(list_choices(section)) or '(none)'})"
        )
    kind = raw.get(disc)
    if kind not in options:
        raise ConfigError(
            f"config key '{section}.{disc}' is {kind!r}{suggest(kind, options)} expected one of: "
            f"{', '.join(options)}"
        )
    return _typed(options[kind], raw, section)


def _choice_fields(schema, prefix: str) -> Iterator[tuple[str, tuple]]:
    """``(dotted key, allowed values)`` of every :func:`choice` field below ``schema``."""
    for f in fields(schema):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if "choices" in f.metadata:
            yield key, f.metadata["choices"]
        default = f.default_factory() if callable(f.default_factory) else None
        if is_dataclass(default):
            yield from _choice_fields(type(default), key)


def _check_choices(cfg: DictConfig, schemas: Schemas) -> None:
    for section in (None, *schemas.sections, *schemas.variants):
        node = cfg if section is None else cfg.get(section)
        if node is None:
            continue
        schema = OmegaConf.get_type(node)
        if not is_dataclass(schema):
            continue
        for key, allowed in _choice_fields(schema, section or ""):
            value = OmegaConf.select(cfg, key, default=None)
            if value is not None and value not in allowed:
                raise ConfigError(
                    f"config key '{key}' is {value!r}{suggest(value, allowed)} expected one of: "
                    f"{', '.join(map(str, allowed))}"
                )
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            "missing required config value(s): "
            + ", ".join(missing)
            + f" (set on the command line, e.g. {missing[0]}=...)"
        )
    if cfg.get("data") is not None and cfg.get("model") is not None:
        want = schemas.pairs.get(cfg.model.name)
        if want and cfg.data.kind != want:
            raise ConfigError(
                f"model '{cfg.model.name}' needs data of kind '{want}', but data.kind is '{cfg.data.kind}'"
            )


def validate(raw: dict, schemas: Schemas) -> DictConfig:
    """Turn a raw nested dict into a typed, checked config (the single entry point for checking)."""
    raw = dict(raw)
    own = {s: raw.pop(s, None) for s in (*schemas.sections, *schemas.variants)}
    cfg = _typed(RunConfig, raw, "")
    for section, value in own.items():
        if section in schemas.sections:
            typed = _typed(schemas.sections[section], value or {}, section)
        else:
            typed = _variant(section, value, schemas)
        OmegaConf.set_struct(cfg, False)
        cfg[section] = typed
        OmegaConf.set_struct(cfg, True)
    _check_choices(cfg, schemas)
    return cfg


# --------------------------------------------------------------------------------------------------
# composition


def compose(
    experiment: str,
    schemas: Schemas,
    overrides: list[str] | None = None,
    prepare: Callable[[dict], dict] | None = None,
) -> DictConfig:
    """Compose ``experiment`` + its group choices + command-line ``overrides`` into a config checked
    against ``schemas``. ``prepare`` may fill defaults into the merged raw dict before it is checked."""
    path = config_file("experiment", experiment)
    if path is None:
        experiments = list_choices("experiment")
        raise ConfigError(
            f"unknown experiment {experiment!r}{suggest(experiment, experiments)} "
            f"available: {', '.join(experiments) or '(none)'}"
        )
    body = _load_yaml(path)
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
                f"experiment {experiment}: unknown config group {group!r} in defaults{suggest(group, GROUPS)} "
                f"groups: {', '.join(GROUPS)}"
            )
    cli_choices, dotlist = parse_overrides(list(overrides or []))
    raw: dict = {}
    for group in GROUPS:
        picked = cli_choices.get(group, defaults.get(group))
        if picked is None:
            continue
        origin = "command line" if group in cli_choices else f"experiment/{experiment}.yaml defaults"
        raw[group] = _load_choice(group, str(picked), origin)
    raw = _deep_merge(raw, body)
    raw = _deep_merge(raw, dotlist_to_dict(dotlist))
    raw["experiment"] = experiment
    return validate(prepare(raw) if prepare else raw, schemas)


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def from_container(data: dict, schemas: Schemas, overrides: list[str] | None = None) -> DictConfig:
    """Re-check a saved config (``config.yaml`` or a checkpoint's copy) with optional overrides on top."""
    cli_choices, dotlist = parse_overrides(list(overrides or []))
    if cli_choices:
        raise ConfigError(
            f"group choices ({', '.join(f'{k}={v}' for k, v in cli_choices.items())}) cannot be changed "
            "when evaluating a checkpoint; override single keys instead (e.g. data.root=...)"
        )
    return validate(_deep_merge(data, dotlist_to_dict(dotlist)), schemas)


def as_kwargs(node: DictConfig | ListConfig | Any, drop: tuple[str, ...] = ()) -> Any:
    """Plain python containers for passing a section to a constructor."""
    if isinstance(node, DictConfig | ListConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if isinstance(node, dict):
        return {k: v for k, v in node.items() if k not in drop}
    return node
