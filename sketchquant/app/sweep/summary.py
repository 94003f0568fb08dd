"""A sweep folder's ``summary.json`` / ``summary.csv`` (rewritten atomically after every trial) and the
printed table."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from sketchquant.app.sweep.spec import SweepPlan, format_value, trial_args
from sketchquant.core.io import atomic_write_json, atomic_write_text
from sketchquant.core.report import print_table


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
    atomic_write_json(sweep_dir / "summary.json", summary, default=_jsonable)
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
    atomic_write_text(sweep_dir / "summary.csv", buf.getvalue())
    return summary


def _print_summary(plan: SweepPlan, sweep_dir: Path, trials: list[Trial]) -> None:
    best = _best(plan, trials)
    keys = sorted({k for t in trials for k in t.params})
    rows = [
        (
            t.id,
            t.state,
            t.metric,
            *[format_value(t.params.get(k, "")) for k in keys],
            None if t.seconds is None else round(t.seconds),
        )
        for t in trials
    ]
    title = f"sweep {plan.name} ({plan.method}, {plan.goal} {plan.metric}) — {sweep_dir}"
    print_table(title, ["trial", "state", plan.metric, *keys, "s"], rows)
    if best is not None:
        Console().print(
            f"best: trial {best.id} {plan.metric}={best.metric:.4f}  {' '.join(trial_args(best.params))}"
        )
