"""Sweeps on wandb's server (``--online``): the server picks the trials, ``wandb agent`` runs them."""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from urllib.parse import urlparse

from sketchquant.app.methods import compose
from sketchquant.app.sweep.spec import ARGS_MACRO, SweepPlan
from sketchquant.core.config import ConfigError


class SweepError(ValueError):
    """The sweep ran but produced nothing usable (every trial failed)."""


# --------------------------------------------------------------------------------------------------
# online: wandb's server picks the trials, `wandb agent` processes run them


def wandb_api_key() -> str | None:
    key = os.environ.get("WANDB_API_KEY")
    if key:
        return key
    try:
        import wandb  # lazy: online sweeps only (2 s to import)

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
    if not wandb_api_key():
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
    import wandb  # lazy: online sweeps only

    cfg = compose(plan.experiment, plan.overrides)
    spec = online_spec(plan)
    project = spec.get("project") or cfg.logger.project
    entity = spec.get("entity") or cfg.logger.entity
    sweep_id = wandb.sweep(spec, project=project, entity=entity)
    path = "/".join(p for p in (entity, project, sweep_id) if p)
    from sketchquant.app import sweep  # the package owns GPU discovery (and tests replace it there)

    gpus = sweep._gpu_ids()
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
