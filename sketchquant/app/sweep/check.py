"""Build, before the first trial starts, everything each trial of a sweep will build — config, DataModule,
LightningModule and callbacks — without reading data or training, so a value that only fails when a trial
builds its objects (an α ramp with ``t2 ≤ t1``, windows larger than the feature map, ``pq_m`` not dividing
the embedding) stops the sweep at once, naming the trial's parameter values.

Grids are checked trial by trial; random and bayes searches on a sample of draws from the sweeps engine.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from omegaconf import OmegaConf

from sketchquant.app.build import build_callbacks, build_datamodule, build_module
from sketchquant.app.methods import compose
from sketchquant.app.sweep.spec import SweepPlan, _import_sweeps, flatten_run_config, plan_grid, trial_args
from sketchquant.core.config import ConfigError

__all__ = ["check_trials", "trial_draws"]

#: random/bayes searches: how many of the engine's draws are built up front
SAMPLE = 8


def trial_draws(plan: SweepPlan, sample: int = SAMPLE) -> list[dict[str, Any]]:
    """The trials to check: the whole grid, or ``sample`` draws of a random/bayes search."""
    if plan.method == "grid":
        return plan_grid(plan.spec)
    sweeps, _ = _import_sweeps()
    runs = sweeps.next_runs(plan.spec, [], validate=False, n=sample)
    return [flatten_run_config(r.config) for r in runs if r is not None]


def _data_facts(image_size: int) -> SimpleNamespace:
    """Stand-in for a set-up DataModule: the facts a module is built from, with small class counts."""
    return SimpleNamespace(num_classes=3, num_seen_classes=3, multi_label=True, image_size=image_size)


def check_trials(plan: SweepPlan, sample: int = SAMPLE) -> int:
    """Build every checked trial's objects; returns how many trials were checked. A failure raises
    :class:`ConfigError` naming the trial's parameter values and the reason."""
    modules_built: set[str] = set()
    trials = trial_draws(plan, sample)
    with tempfile.TemporaryDirectory() as tmp:
        for params in trials:
            values = " ".join(trial_args(params))
            try:
                cfg = compose(plan.experiment, [*plan.overrides, *trial_args(params)])
                size = build_datamodule(cfg).image_size  # constructing one reads nothing from disk
                build_callbacks(cfg, Path(tmp), progress_bar=False)
                key = OmegaConf.to_yaml(cfg.model) + str(size)
                if key not in modules_built:  # trials that differ only outside the model share a build
                    # the architecture is what can fail, not the weights file (inference: no weights)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        build_module(cfg, _data_facts(size), inference=True)
                    modules_built.add(key)
            except ConfigError as err:
                raise ConfigError(f"sweep {plan.name}: trial {values}: {err}") from err
            except (ValueError, TypeError, RuntimeError) as err:
                first = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise ConfigError(f"sweep {plan.name}: trial {values} cannot be built: {first}") from err
    return len(trials)
