"""Hyperparameter sweeps in wandb's sweep format, run offline (default) or with wandb's server (``--online``).

A spec (``configs/sweeps/*.yaml``) is a plain wandb sweep config::

    name: zs_sbir_losses
    method: grid                              # grid | random | bayes
    metric: {name: val/map_all, goal: maximize}
    parameters:
      model.lambda_da: {values: [0.0, 0.1, 1.0]}
      model.lambda_kd: {values: [0.0, 1.0]}
    command: [${env}, sketchquant, train, zs_sbir, ${args_no_hyphens}]
    run_cap: 20                               # optional: max trials (needed by random/bayes, or --count)

Parameter names are dotted config keys, so wandb's ``${args_no_hyphens}`` (``a.b=value``) is exactly the
override format of ``sketchquant train``. Words in ``command`` between the experiment and the macro are
fixed overrides for every trial.

Offline, the search itself comes from wandb's open ``sweeps`` engine (``sweeps.next_run``: grid, random,
bayes), each trial is ``python -m sketchquant.app.cli train <experiment> <k=v ...> <overrides>`` in a subprocess
with its own run folder ``<sweep dir>/trials/trial-NNN`` (env ``SKETCHQUANT_RUN_DIR``) and reads its score
from that folder's ``results.json``. The sweep folder gets ``sweep.yaml`` (the spec), ``summary.json`` and
``summary.csv`` (rewritten atomically after every trial).

Zero-shot protocol: a sweep selects on a **validation** metric (held-out seen classes, ``val/...``). A test
metric (unseen classes) is accepted with a loud warning, since selecting on it leaks the test classes.

Everything about the spec (method, metric, every parameter key and candidate value composed against the
experiment) is checked before the first trial starts: a typo fails in a second with a :class:`ConfigError`.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import csv
import io
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml
from omegaconf import OmegaConf

from sketchquant.app.methods import compose
from sketchquant.core.config import ConfigError

log = logging.getLogger("sketchquant.app.sweep")

METHODS = ("grid", "random", "bayes")
GOALS = {"maximize": "max", "minimize": "min"}
ARGS_MACRO = "${args_no_hyphens}"
COMMAND_HINT = "[${env}, sketchquant, train, <experiment>, ${args_no_hyphens}]"


def _import_sweeps():
    with warnings.catch_warnings():  # sweeps' pydantic models warn about renamed v1 config keys
        warnings.simplefilter("ignore")
        import sweeps
        from sweeps.params import HyperParameter

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
            out.update(_flatten_dict(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _flatten_dict(value: dict, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, dict):
            out.update(_flatten_dict(item, f"{prefix}{key}."))
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
    import numpy as np

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
        from sketchquant.core.config import config_dir, list_choices

        named = config_dir() / "sweeps" / f"{path.name}.yaml"
        if path.suffix == "" and named.is_file():  # `sketchquant sweep zs_sbir_losses`
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
        from sketchquant.core.config import suggest

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


# --------------------------------------------------------------------------------------------------
# trials


@dataclass
class Trial:
    id: int
    params: dict[str, Any]
    run_dir: str
    state: str = "pending"  # pending | running | finished | failed
    metric: float | None = None
    seconds: float | None = None
    returncode: int | None = None
    error: str | None = None
    device: str | None = None
    val: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return Path(self.run_dir).name


_PROCS: dict[int, subprocess.Popen] = {}
_PROCS_LOCK = threading.Lock()


def launch_trial(cmd: list[str], env: dict[str, str], run_dir: Path) -> int:
    """Run one trial to the end; stdout and stderr go to ``<run_dir>/stdout.log``. Returns the exit code."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "stdout.log", "wb") as out:
        out.write(("$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        # own process group: an interrupted sweep can stop a trial with its data-loader workers
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        with _PROCS_LOCK:
            _PROCS[proc.pid] = proc
        try:
            return proc.wait()
        finally:
            with _PROCS_LOCK:
                _PROCS.pop(proc.pid, None)


def _stop_running_trials() -> None:
    with _PROCS_LOCK:
        procs = list(_PROCS.values())
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.time() + 10
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _gpu_ids() -> list[str]:
    """Physical ids of the visible GPUs (respecting an inherited ``CUDA_VISIBLE_DEVICES``)."""
    try:
        import torch

        n = torch.cuda.device_count()
    except Exception:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else []
    return ids[:n] if len(ids) >= n else [str(i) for i in range(n)]


def _trial_env(plan: SweepPlan, run_dir: Path, slot: int, gpus: list[str], workers: int) -> dict[str, str]:
    env = dict(os.environ)
    env["SKETCHQUANT_RUN_DIR"] = str(run_dir)
    env["WANDB_RUN_GROUP"] = plan.name
    env.pop("SKETCHQUANT_RUN_ID", None)
    env.setdefault("WANDB_MODE", "offline")
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    elif workers > 1 and "OMP_NUM_THREADS" not in env:  # CPU trials side by side: share the cores
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    return env


def trial_command(plan: SweepPlan, params: dict[str, Any]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sketchquant.app.cli",
        "train",
        plan.experiment,
        *trial_args(params),
        *plan.overrides,
    ]


def _run_trial(plan: SweepPlan, trial: Trial, env: dict[str, str]) -> Trial:
    run_dir = Path(trial.run_dir)
    start = time.time()
    trial.state = "running"
    try:
        trial.returncode = launch_trial(trial_command(plan, trial.params), env, run_dir)
    except Exception as err:  # could not even start it
        trial.returncode, trial.error = -1, f"launch failed: {err}"
    trial.seconds = round(time.time() - start, 2)
    results = run_dir / "results.json"
    if trial.returncode != 0:
        trial.state = "failed"
        reason = (
            f"killed by signal {-trial.returncode}"
            if trial.returncode < 0
            else f"exit code {trial.returncode}"
        )
        trial.error = trial.error or f"{reason} (see {run_dir / 'stdout.log'})"
        return trial
    try:
        payload = json.loads(results.read_text())
        trial.val = {k: float(v) for k, v in (payload.get("val") or {}).items()}
        trial.test = {k: float(v) for k, v in (payload.get("metrics") or {}).items()}
    except (OSError, ValueError, TypeError, AttributeError) as err:
        trial.state, trial.error = "failed", f"no readable results.json ({err})"
        return trial
    scores = trial.val if plan.metric_source == "val" else trial.test
    value = scores.get(plan.metric)
    if value is None or not math.isfinite(value):
        trial.state = "failed"
        trial.error = f"results.json has no finite {plan.metric_source}[{plan.metric!r}] (got {value!r})"
        return trial
    trial.state, trial.metric = "finished", float(value)
    return trial


# --------------------------------------------------------------------------------------------------
# summary


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _best(plan: SweepPlan, trials: list[Trial]) -> Trial | None:
    done = [t for t in trials if t.state == "finished" and t.metric is not None]
    if not done:
        return None
    pick = max if plan.goal == "maximize" else min
    return pick(done, key=lambda t: t.metric)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_summary(plan: SweepPlan, sweep_dir: Path, trials: list[Trial], *, complete: bool = True) -> dict:
    """``summary.json`` + ``summary.csv`` in ``sweep_dir`` (each via a temp file and ``os.replace``)."""
    best = _best(plan, trials)
    summary = {
        "name": plan.name,
        "spec": str(plan.path) if plan.path else None,
        "experiment": plan.experiment,
        "method": plan.method,
        "metric": {"name": plan.metric, "goal": plan.goal, "source": plan.metric_source},
        "overrides": plan.overrides,
        "complete": complete,
        "n_trials": len(trials),
        "n_finished": sum(t.state == "finished" for t in trials),
        "n_failed": sum(t.state == "failed" for t in trials),
        "best": None
        if best is None
        else {
            "trial": best.id,
            "run_dir": best.run_dir,
            "metric": best.metric,
            "params": best.params,
            "overrides": trial_args(best.params),
            "command": ["sketchquant", "train", plan.experiment, *trial_args(best.params), *plan.overrides],
        },
        "best_config": None if best is None else best.params,
        "trials": [asdict(t) for t in trials],
    }
    _atomic_write(sweep_dir / "summary.json", json.dumps(summary, indent=2, default=_jsonable))
    keys = sorted({k for t in trials for k in t.params})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["id", "state", plan.metric, *keys, "seconds", "run_dir", "error"])
    for t in trials:
        writer.writerow(
            [
                t.id,
                t.state,
                "" if t.metric is None else t.metric,
                *[format_value(t.params[k]) if k in t.params else "" for k in keys],
                "" if t.seconds is None else t.seconds,
                t.run_dir,
                t.error or "",
            ]
        )
    _atomic_write(sweep_dir / "summary.csv", buf.getvalue())
    return summary


def _print_summary(plan: SweepPlan, sweep_dir: Path, trials: list[Trial]) -> None:
    best = _best(plan, trials)
    keys = sorted({k for t in trials for k in t.params})
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"sweep {plan.name} ({plan.method}, {plan.goal} {plan.metric}) — {sweep_dir}")
        for col in ("trial", "state", plan.metric, *keys, "s"):
            table.add_column(col, justify="right" if col in ("trial", plan.metric, "s") else "left")
        for t in trials:
            style = (
                "bold green" if best is not None and t is best else ("red" if t.state == "failed" else None)
            )
            table.add_row(
                str(t.id),
                t.state,
                "" if t.metric is None else f"{t.metric:.4f}",
                *[format_value(t.params.get(k, "")) for k in keys],
                "" if t.seconds is None else f"{t.seconds:.0f}",
                style=style,
            )
        console = Console()
        console.print(table)
        if best is not None:
            console.print(
                f"best: trial {best.id} {plan.metric}={best.metric:.4f}  {' '.join(trial_args(best.params))}"
            )
    except ImportError:  # pragma: no cover
        for t in trials:
            print(t.id, t.state, t.metric, t.params)


# --------------------------------------------------------------------------------------------------
# the offline loop


def _sweep_dir(plan: SweepPlan, out: str | os.PathLike | None) -> Path:
    if out is not None:
        return Path(out)
    return Path(plan.run_dir) / "sweeps" / f"{plan.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_offline(plan: SweepPlan, sweep_dir: Path, workers: int = 1) -> dict:
    sweeps, _ = _import_sweeps()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if plan.path is not None:
        shutil.copyfile(plan.path, sweep_dir / "sweep.yaml")
    else:
        _atomic_write(sweep_dir / "sweep.yaml", OmegaConf.to_yaml(OmegaConf.create(plan.spec)))
    gpus = _gpu_ids()
    workers = max(1, int(workers))
    trials: list[Trial] = []
    history: list[Any] = []  # sweeps.SweepRun per trial: what the engine sees
    free_slots = list(range(workers))
    running: dict[cf.Future, tuple[Trial, Any, int]] = {}
    exhausted = False
    lock_summary = threading.Lock()
    log.info(
        "sweep %s: %s search over %s, up to %s trials, %d worker(s)%s",
        plan.name,
        plan.method,
        ", ".join(plan.candidates),
        plan.cap,
        workers,
        f", GPUs {gpus}" if gpus else "",
    )
    pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="trial")
    try:
        while True:
            while free_slots and not exhausted and len(trials) < plan.cap:
                with warnings.catch_warnings():  # the bayes engine's GP fit warns about its bounds
                    warnings.simplefilter("ignore")
                    suggestion = sweeps.next_run(plan.spec, history, validate=True)
                if suggestion is None:  # grid done
                    exhausted = True
                    break
                slot = free_slots.pop(0)
                trial = Trial(
                    id=len(trials) + 1,
                    params=flatten_run_config(suggestion.config),
                    run_dir=str(sweep_dir / "trials" / f"trial-{len(trials) + 1:03d}"),
                )
                env = _trial_env(plan, Path(trial.run_dir), slot, gpus, workers)
                trial.device = env.get("CUDA_VISIBLE_DEVICES") if gpus else "cpu"
                suggestion.name, suggestion.state = trial.name, sweeps.RunState.running
                trials.append(trial)
                history.append(suggestion)
                print(
                    f"[sweep {plan.name}] trial {trial.id}/{plan.cap}: {' '.join(trial_args(trial.params))}"
                    f"{'' if not gpus else ' (GPU ' + str(trial.device) + ')'}",
                    flush=True,
                )
                running[pool.submit(_run_trial, plan, trial, env)] = (trial, suggestion, slot)
            if not running:
                break
            done, _ = cf.wait(list(running), return_when=cf.FIRST_COMPLETED)
            for fut in done:
                trial, suggestion, slot = running.pop(fut)
                free_slots.append(slot)
                try:
                    fut.result()
                except Exception as err:  # a bug in the bookkeeping must not lose the sweep
                    trial.state, trial.error = "failed", f"{type(err).__name__}: {err}"
                if trial.state == "finished":
                    suggestion.state = sweeps.RunState.finished
                    suggestion.summary_metrics = {plan.metric: trial.metric}
                else:
                    suggestion.state = sweeps.RunState.failed
                msg = f"{plan.metric}={trial.metric:.4f}" if trial.state == "finished" else trial.error
                print(
                    f"[sweep {plan.name}] trial {trial.id} {trial.state} in {trial.seconds}s: {msg}",
                    flush=True,
                )
                with lock_summary:
                    write_summary(plan, sweep_dir, trials, complete=False)
    except BaseException:  # Ctrl-C / SIGTERM: stop the trials, keep what is known
        _stop_running_trials()
        for trial, _, _ in running.values():
            trial.state, trial.error = "failed", trial.error or "interrupted"
        write_summary(plan, sweep_dir, trials, complete=False)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    summary = write_summary(plan, sweep_dir, trials, complete=True)
    _print_summary(plan, sweep_dir, trials)
    summary["sweep_dir"] = str(sweep_dir)
    if trials and summary["n_finished"] == 0:
        raise SweepError(
            f"sweep {plan.name}: all {len(trials)} trials failed; see "
            f"{Path(trials[0].run_dir) / 'stdout.log'} (summary in {sweep_dir})"
        )
    return summary


class SweepError(ValueError):
    """The sweep ran but produced nothing usable (every trial failed)."""


# --------------------------------------------------------------------------------------------------
# online: wandb's server picks the trials, `wandb agent` processes run them


def _wandb_api_key() -> str | None:
    key = os.environ.get("WANDB_API_KEY")
    if key:
        return key
    try:
        import wandb

        with warnings.catch_warnings():  # wandb.api is deprecated but reads env / netrc without the network
            warnings.simplefilter("ignore")
            return wandb.api.api_key
    except Exception:
        return None


def _check_online() -> None:
    """Fail fast, before contacting anything, when an online sweep cannot work."""
    mode = os.environ.get("WANDB_MODE", "")
    if mode in ("disabled", "dryrun") or os.environ.get("WANDB_DISABLED", "").lower() in ("1", "true"):
        raise ConfigError(
            f"--online needs wandb enabled, but WANDB_MODE={mode or '(unset)'} / WANDB_DISABLED is "
            "set; unset them (or run the sweep offline, without --online)"
        )
    if not _wandb_api_key():
        raise ConfigError(
            "--online needs a wandb login: run `wandb login` or set WANDB_API_KEY "
            "(or run the sweep offline, without --online)"
        )
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    host, port = url.hostname or "api.wandb.ai", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as err:
        raise ConfigError(
            f"--online: cannot reach the wandb server {host}:{port} ({err}); run the sweep "
            "offline (without --online) or check the network / WANDB_BASE_URL"
        ) from err


def online_spec(plan: SweepPlan) -> dict:
    """The spec sent to wandb's server: the command carries the fixed and command-line overrides, and the
    wandb logger (the agent's trials must log to wandb for the server to see the metric)."""
    spec = copy.deepcopy(plan.spec)
    extra = list(plan.extra)
    if plan.logger != "wandb":
        extra.append("logger=wandb")
    command = [w for w in spec["command"] if w != ARGS_MACRO]
    spec["command"] = [*command, *extra, ARGS_MACRO]
    spec.setdefault("name", plan.name)
    return spec


def run_online(plan: SweepPlan, workers: int = 1, count: int | None = None) -> dict:
    """``wandb.sweep`` then one ``wandb agent`` subprocess per worker (GPU-pinned), each running the spec's
    command (``sketchquant train <experiment> ... ${args_no_hyphens}``) with ``WANDB_MODE=online``."""
    _check_online()
    import wandb

    cfg = compose(plan.experiment, plan.overrides)
    spec = online_spec(plan)
    project = spec.get("project") or cfg.logger.project
    entity = spec.get("entity") or cfg.logger.entity
    sweep_id = wandb.sweep(spec, project=project, entity=entity)
    path = "/".join(p for p in (entity, project, sweep_id) if p)
    gpus = _gpu_ids()
    workers = max(1, int(workers))
    bin_dir = str(Path(sys.executable).parent)  # `${env} sketchquant` must find this installation
    total = count if count is not None else plan.spec.get("run_cap")
    procs = []
    for i in range(workers):
        env = dict(os.environ, WANDB_MODE="online", PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""))
        env.pop("SKETCHQUANT_RUN_DIR", None)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
        cmd = [sys.executable, "-m", "wandb", "agent"]
        if total is not None:
            share = total // workers + (1 if i < total % workers else 0)
            if share == 0:
                continue
            cmd += ["--count", str(share)]
        procs.append(subprocess.Popen([*cmd, path], env=env))
        time.sleep(2)  # run folders are named by the second
    print(
        f"[sweep {plan.name}] wandb sweep {path}: {len(procs)} agent(s) running; more machines can join "
        f"with `wandb agent {path}`",
        flush=True,
    )
    codes = []
    try:
        codes = [p.wait() for p in procs]
    except BaseException:
        for p in procs:
            p.terminate()
        raise
    return {"sweep_id": sweep_id, "path": path, "agents": len(procs), "exit_codes": codes}


# --------------------------------------------------------------------------------------------------
# entry point


def run_sweep(
    spec_path: str | os.PathLike | dict,
    *,
    online: bool = False,
    workers: int = 1,
    count: int | None = None,
    out: str | os.PathLike | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> dict:
    """Check ``spec_path`` completely, then run it: offline (default; the ``sweeps`` engine picks the trials,
    each a ``sketchquant train`` subprocess) or ``online`` (wandb server + ``wandb agent`` processes).

    ``workers`` trials run side by side (worker ``i`` pinned to GPU ``i % n_gpus`` when there are GPUs),
    ``count`` caps the trials (default: the whole grid; random/bayes need it or the spec's ``run_cap``),
    ``out`` is the sweep folder (default ``runs/sweeps/<name>-<time>``), ``overrides`` go to every trial.
    Returns the summary (offline) or the wandb sweep id (online)."""
    if count is not None and count < 1:
        raise ConfigError(f"--count must be a positive number of trials, got {count}")
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    plan = validate_spec(spec_path, count=count, overrides=list(overrides))
    if online:
        return run_online(plan, workers=workers, count=count)
    return run_offline(plan, _sweep_dir(plan, out), workers=workers)
