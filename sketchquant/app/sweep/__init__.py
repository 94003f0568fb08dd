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
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from sketchquant.app.sweep.check import check_trials
from sketchquant.app.sweep.online import SweepError, online_spec, run_online
from sketchquant.app.sweep.spec import (
    SweepPlan,
    _import_sweeps,
    flatten_run_config,
    format_value,
    plan_grid,
    trial_args,
    validate_spec,
)
from sketchquant.app.sweep.summary import Trial, _print_summary, write_summary
from sketchquant.core.config import ConfigError
from sketchquant.core.io import atomic_write_text

log = logging.getLogger("sketchquant.app.sweep")


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
        atomic_write_text(sweep_dir / "sweep.yaml", OmegaConf.to_yaml(OmegaConf.create(plan.spec)))
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
    check_trials(plan)  # everything a trial builds, built once up front: no trial fails on a bad value
    if online:
        return run_online(plan, workers=workers, count=count)
    return run_offline(plan, _sweep_dir(plan, out), workers=workers)


__all__ = [
    "SweepError",
    "check_trials",
    "SweepPlan",
    "Trial",
    "format_value",
    "online_spec",
    "plan_grid",
    "run_offline",
    "run_online",
    "run_sweep",
    "trial_args",
    "validate_spec",
    "write_summary",
]
