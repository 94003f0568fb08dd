"""Sweep specs (wandb's sweep format): loading, checking every parameter and every trial before the first
trial starts, and the grid plan."""

from __future__ import annotations

import copy
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sketchquant.app.methods import compose
from sketchquant.core.config import ConfigError, config_file, list_choices, suggest

METHODS = ("grid", "random", "bayes")
GOALS = {"maximize": "max", "minimize": "min"}
ARGS_MACRO = "${args_no_hyphens}"
COMMAND_HINT = "[${env}, sketchquant, train, <experiment>, ${args_no_hyphens}]"


def _import_sweeps():
    with warnings.catch_warnings():  # sweeps' pydantic models warn about renamed v1 config keys
        warnings.simplefilter("ignore")
        import sweeps  # lazy: the sweeps engine (scikit-learn, scipy) only for sweeps that draw trials
        from sweeps.params import HyperParameter  # lazy: as above

    return sweeps, HyperParameter


# --------------------------------------------------------------------------------------------------
# the spec


@dataclass
class SweepPlan:
    """A checked spec: what every trial runs and how it is scored."""

    path: Path | None
    spec: dict  # the wandb sweep config as given (what the sweeps engine and wandb.sweep see)
    name: str
    method: str
    metric: str
    goal: str  # maximize | minimize
    experiment: str
    fixed: list[str]  # overrides from the spec's command (between the experiment and the macro)
    extra: list[str]  # overrides from the command line, then the ones the sweep adds (monitor)
    candidates: dict[str, list]  # every parameter key -> the values that were checked
    metric_source: str  # "val" or "metrics" (test) in results.json
    cap: int | None  # max trials (None: the whole grid)
    run_dir: str  # the experiment's run_dir (sweep folders go to <run_dir>/sweeps/)
    logger: str  # the experiment's logger name

    @property
    def overrides(self) -> list[str]:
        return [*self.fixed, *self.extra]


def format_value(value: Any) -> str:
    """A value as wandb's agent writes it into ``${args_no_hyphens}`` (``str(value)``), YAML-safe for None."""
    if hasattr(value, "item") and not isinstance(value, list | dict | str):  # numpy scalars
        value = value.item()
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


def trial_args(params: dict[str, Any]) -> list[str]:
    return [f"{key}={format_value(value)}" for key, value in params.items()]


def flatten_run_config(config: dict, prefix: str = "") -> dict[str, Any]:
    """A sweeps ``SweepRun.config`` (``{name: {"value": v}}``, nested for nested specs) -> ``{a.b: v}``."""
    out: dict[str, Any] = {}
    for key, entry in config.items():
        value = entry.get("value") if isinstance(entry, dict) and "value" in entry else entry
        if isinstance(value, dict):
            out.update(flatten_dict(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def flatten_dict(value: dict, prefix: str = "") -> dict[str, Any]:
    """A nested mapping (a resolved config, say) as ``{"a.b.c": leaf}``."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, dict):
            out.update(flatten_dict(item, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = item
    return out


def _flat_parameters(parameters: dict, prefix: str = "") -> dict[str, dict]:
    """Spec parameters (dotted keys, or wandb's nested ``{parameters: {...}}``) -> ``{a.b: param spec}``."""
    out: dict[str, dict] = {}
    for key, spec in parameters.items():
        if isinstance(spec, dict) and isinstance(spec.get("parameters"), dict):
            out.update(_flat_parameters(spec["parameters"], f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = spec
    return out


def _candidates(name: str, spec: Any, where: str) -> list:
    """The values of one parameter that are composed before the sweep: all grid values, else the bounds."""
    _, HyperParameter = _import_sweeps()
    if not isinstance(spec, dict):
        raise ConfigError(
            f"{where}: parameter '{name}' must be a mapping like {{values: [...]}}, got {spec!r}"
        )
    try:
        hp = HyperParameter(name, spec)
    except (ValueError, TypeError, KeyError) as err:
        raise ConfigError(f"{where}: parameter '{name}': {err}") from err
    if hp.type == HyperParameter.CONSTANT:
        return [hp.config["value"]]
    if hp.type in (HyperParameter.CATEGORICAL, HyperParameter.CATEGORICAL_PROB):
        return list(hp.config["values"])
    if (
        "min" in hp.config
        and "max" in hp.config
        and hp.type
        in (
            HyperParameter.INT_UNIFORM,
            HyperParameter.UNIFORM,
            HyperParameter.Q_UNIFORM,
        )
    ):
        return [hp.config["min"], hp.config["max"]]

    return [
        v
        for v in np.asarray(hp.ppf(np.array([0.001, 0.5, 0.999]))).tolist()
        if not isinstance(v, float) or math.isfinite(v)
    ]


def _experiment_from_command(command: Any, where: str) -> tuple[str, list[str]]:
    if not isinstance(command, list) or not all(isinstance(w, str) for w in command):
        raise ConfigError(f"{where}: 'command' must be a list like {COMMAND_HINT}, got {command!r}")
    if "train" not in command:
        raise ConfigError(
            f"{where}: 'command' must run `sketchquant train <experiment>`, like {COMMAND_HINT}"
        )
    i = command.index("train")
    if i + 1 >= len(command) or command[i + 1].startswith("${") or "=" in command[i + 1]:
        raise ConfigError(f"{where}: 'command' names no experiment after 'train', expected {COMMAND_HINT}")
    if ARGS_MACRO not in command:
        raise ConfigError(
            f"{where}: 'command' must pass the parameters with {ARGS_MACRO} (key=value overrides)"
        )
    fixed = [w for w in command[i + 2 :] if not w.startswith("${")]
    bad = [w for w in fixed if "=" not in w]
    if bad:
        raise ConfigError(
            f"{where}: 'command' words after the experiment must be key=value overrides, got {bad}"
        )
    return command[i + 1], fixed


def load_spec(spec_path: str | os.PathLike | dict) -> tuple[dict, Path | None]:
    if isinstance(spec_path, dict):
        return copy.deepcopy(spec_path), None
    path = Path(spec_path)
    if not path.is_file():
        named = config_file("sweeps", path.name) if path.suffix == "" else None
        if named is not None:  # `sketchquant sweep zs_sbir_losses`
            path = named
        else:
            known = ", ".join(list_choices("sweeps")) or "(none)"
            raise FileNotFoundError(f"sweep spec {spec_path} not found (configs/sweeps/ has: {known})")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read sweep spec {path}: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"sweep spec {path} must hold a mapping, got {type(data).__name__}")
    return data, path


def validate_spec(
    spec_path: str | os.PathLike | dict,
    *,
    count: int | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> SweepPlan:
    """Load and check a spec; compose every candidate value of every parameter. Starts nothing."""
    spec, path = load_spec(spec_path)
    where = f"sweep spec {path}" if path else "sweep spec"
    method = spec.get("method")
    if method not in METHODS:
        raise ConfigError(
            f"{where}: unknown method {method!r}{suggest(method, METHODS)} allowed: {', '.join(METHODS)}"
        )
    metric = spec.get("metric")
    if not isinstance(metric, dict) or not metric.get("name"):
        raise ConfigError(
            f"{where}: missing 'metric: {{name: val/..., goal: maximize}}' (the validation "
            "metric that ranks trials)"
        )
    goal = metric.get("goal")
    if goal not in GOALS:
        raise ConfigError(f"{where}: metric.goal must be maximize or minimize, got {goal!r}")
    parameters = spec.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise ConfigError(
            f"{where}: 'parameters' must map config keys to {{values: [...]}} (got {parameters!r})"
        )
    experiment, fixed = _experiment_from_command(spec.get("command"), where)

    sweeps, _ = _import_sweeps()
    problems = sweeps.schema_violations_from_proposed_config(spec)
    if problems:
        raise ConfigError(f"{where}: not a valid wandb sweep config: {'; '.join(problems)}")

    extra = [str(o) for o in overrides]
    try:
        base = compose(experiment, [*fixed, *extra])
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from err
    flat = _flat_parameters(parameters)
    clash = sorted(set(flat) & {o.split("=", 1)[0] for o in [*fixed, *extra]})
    if clash:
        raise ConfigError(
            f"{where}: {', '.join(clash)} is swept by the spec and also set as an override; drop one of them"
        )
    candidates: dict[str, list] = {}
    for key, pspec in flat.items():
        values = _candidates(key, pspec, where)
        for value in values:
            try:
                compose(experiment, [*fixed, *extra, f"{key}={format_value(value)}"])
            except ConfigError as err:
                raise ConfigError(f"{where}: parameter '{key}' value {value!r}: {err}") from err
        candidates[key] = values

    name = metric["name"]
    if name.startswith("val/"):
        source = "val"
        mode = GOALS[goal]
        # results.json's "val" holds the best score of the run's monitor: make the monitor the sweep metric
        if base.monitor != name:
            extra.append(f"monitor={name}")
        if base.monitor_mode != mode:
            extra.append(f"monitor_mode={mode}")
    elif name.startswith("test/"):
        source = "metrics"
        warnings.warn(
            f"{where}: selecting on the test metric {name!r} breaks the zero-shot protocol (the unseen test "
            "classes then choose the hyperparameters); use a val/ metric",
            UserWarning,
            stacklevel=2,
        )
    else:
        raise ConfigError(
            f"{where}: metric {name!r} must be a validation metric 'val/...' (e.g. "
            f"{base.monitor}) — that is what results.json records"
        )

    cap = count if count is not None else spec.get("run_cap")
    if cap is not None and (not isinstance(cap, int) or cap < 1):
        raise ConfigError(f"{where}: count/run_cap must be a positive integer, got {cap!r}")
    if method == "grid":
        size = len(plan_grid(spec, where=where))
        cap = size if cap is None else min(cap, size)
    elif cap is None:
        raise ConfigError(
            f"{where}: method {method} never runs out of trials: give --count N or 'run_cap: N'"
        )

    return SweepPlan(
        path=path,
        spec=spec,
        name=str(spec.get("name") or (path.stem if path else "sweep")),
        method=method,
        metric=name,
        goal=goal,
        experiment=experiment,
        fixed=fixed,
        extra=extra,
        candidates=candidates,
        metric_source=source,
        cap=cap,
        run_dir=str(base.run_dir),
        logger=str(base.logger.name),
    )


def plan_grid(spec: dict, where: str = "sweep spec") -> list[dict[str, Any]]:
    """Every trial of a grid spec, in the sweeps engine's order: ``[{a.b: v, ...}, ...]``."""
    sweeps, _ = _import_sweeps()
    try:
        runs = sweeps.next_runs(spec, [], validate=True, n=1_000_000)
    except Exception as err:  # jsonschema / ValueError from the engine
        raise ConfigError(f"{where}: {getattr(err, 'message', err)}") from err
    return [flatten_run_config(r.config) for r in runs if r is not None]
