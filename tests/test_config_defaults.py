"""One source per default: the config dataclasses hold every default; the files under configs/ state only
what they change (a group file against its schema, an experiment against its groups)."""

from __future__ import annotations

from dataclasses import asdict

import pytest
from omegaconf import OmegaConf

from sketchquant.app.methods import METHODS, SCHEMAS, compose, from_container
from sketchquant.core.config import GROUPS, SHIPPED_CONFIGS, LoggerConfig, TrainerConfig, to_container

DISCRIMINATORS = ("name", "kind")


def _schema(group: str, data: dict) -> type:
    if group == "trainer":
        return TrainerConfig
    if group == "logger":
        return LoggerConfig
    disc, options = SCHEMAS.variants[group]
    return options[data[disc]]


def _restated(defaults: dict, data: dict, prefix: str = "") -> list[str]:
    """Dotted keys of ``data`` whose value equals the one in ``defaults``."""
    out = []
    for key, value in data.items():
        if key not in defaults or key in DISCRIMINATORS:
            continue
        if isinstance(value, dict) and isinstance(defaults[key], dict):
            out += _restated(defaults[key], value, f"{prefix}{key}.")
        elif value == defaults[key]:
            out.append(f"{prefix}{key}={value!r}")
    return out


def _yaml(path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(path)) or {}


GROUP_FILES = [(g, p) for g in GROUPS for p in sorted((SHIPPED_CONFIGS / g).glob("*.yaml"))]


@pytest.mark.parametrize(("group", "path"), GROUP_FILES, ids=[f"{g}/{p.stem}" for g, p in GROUP_FILES])
def test_group_file_restates_no_default(group, path):
    data = _yaml(path)
    defaults = OmegaConf.to_container(OmegaConf.structured(_schema(group, data)))
    assert _restated(defaults, data) == [], f"{group}/{path.name} restates its schema's defaults"


@pytest.mark.parametrize(
    ("group", "choice", "schema"),
    [("model", m.name, m.model_schema) for m in METHODS.values()] + [("logger", "csv", LoggerConfig)],
)
def test_default_choice_composes_to_exactly_the_schema_defaults(group, choice, schema):
    data = _yaml(SHIPPED_CONFIGS / group / f"{choice}.yaml")
    merged = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), data))
    assert asdict(merged) == asdict(schema())


EXPERIMENTS = sorted(p.stem for p in (SHIPPED_CONFIGS / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_states_only_what_it_changes(experiment):
    body = _yaml(SHIPPED_CONFIGS / "experiment" / f"{experiment}.yaml")
    choices = body.pop("defaults")
    # what the experiment's groups, the schemas and its method's evaluation facts give without it
    raw = {group: _yaml(SHIPPED_CONFIGS / group / f"{choice}.yaml") for group, choice in choices.items()}
    raw["experiment"] = experiment
    raw["data"].setdefault("root", "x")
    method = METHODS[raw["model"]["name"]]
    raw["eval"] = {"protocol": method.protocol, **method.eval_defaults}
    groups_only = to_container(from_container(raw))
    assert _restated(groups_only, body) == [], f"experiment/{experiment}.yaml restates what its groups give"
    composed = to_container(compose(experiment, ["data.root=x"]))
    assert composed["experiment"] == experiment
