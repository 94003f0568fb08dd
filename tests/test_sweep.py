"""Sweeps: spec checks before any trial, the sweeps-engine planner, failing trials, summaries, end to end."""

from __future__ import annotations

import csv
import itertools
import json
import os
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_overrides

from sketchquant.app import sweep as sw
from sketchquant.app.sweep import online as sw_online
from sketchquant.core.config import SHIPPED_CONFIGS, ConfigError

COMMAND = ["${env}", "sketchquant", "train", "zs_sbir", "${args_no_hyphens}"]


def _spec(tmp_path: Path, **changes) -> Path:
    spec = {
        "name": "t",
        "method": "grid",
        "metric": {"name": "val/map_all", "goal": "maximize"},
        "parameters": {"model.lambda_da": {"values": [0.0, 0.1]}, "model.lambda_kd": {"values": [0.5, 1.0]}},
        "command": list(COMMAND),
    }
    for key, value in changes.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def no_launch(monkeypatch):
    """Any attempt to start a trial fails the test."""

    def boom(*args, **kwargs):
        pytest.fail("a trial was launched although the spec is invalid")

    monkeypatch.setattr(sw, "launch_trial", boom)


def _fake_launcher(monkeypatch, score, calls=None):
    """Replace the subprocess with a function: ``score(params)`` -> metric, or an int exit code to fail."""

    def launch(cmd, env, run_dir):
        params = dict(a.split("=", 1) for a in cmd[5:] if "=" in a)
        if calls is not None:
            calls.append({"cmd": cmd, "env": env, "run_dir": run_dir, "params": params})
        assert env["SKETCHQUANT_RUN_DIR"] == str(run_dir)
        result = score(params)
        if isinstance(result, int):
            return result
        run_dir.mkdir(parents=True, exist_ok=True)
        if result is not None:
            payload = {
                "checkpoint": "x.ckpt",
                "val": {"val/map_all": result},
                "metrics": {"test/map_all": 0.1},
            }
            (run_dir / "results.json").write_text(json.dumps(payload))
        return 0

    monkeypatch.setattr(sw, "launch_trial", launch)


# --------------------------------------------------------------------------------------------------
# validation: nothing starts


def test_unknown_key_names_it_with_suggestion(tmp_path, no_launch):
    path = _spec(tmp_path, parameters={"model.lambda_daa": {"values": [0.1]}})
    with pytest.raises(ConfigError, match=r"model\.lambda_daa.*did you mean 'lambda_da'"):
        sw.run_sweep(path, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_wrong_typed_value_names_key_and_value(tmp_path, no_launch):
    path = _spec(tmp_path, parameters={"model.lambda_da": {"values": [0.1, "abc"]}})
    with pytest.raises(ConfigError, match=r"model\.lambda_da.*'abc'"):
        sw.run_sweep(path, out=tmp_path / "out")


def test_distribution_bounds_are_checked(tmp_path, no_launch):
    path = _spec(tmp_path, method="random", parameters={"eval.pq_k": {"min": 0.5, "max": 4.5}})
    with pytest.raises(ConfigError, match=r"eval\.pq_k"):
        sw.run_sweep(path, count=2, out=tmp_path / "out")


def test_unknown_method(tmp_path, no_launch):
    with pytest.raises(ConfigError, match=r"unknown method 'gird'.*did you mean 'grid'"):
        sw.run_sweep(_spec(tmp_path, method="gird"), out=tmp_path / "out")


def test_random_needs_count_or_run_cap(tmp_path, no_launch):
    with pytest.raises(ConfigError, match=r"--count N or 'run_cap: N'"):
        sw.run_sweep(_spec(tmp_path, method="random"), out=tmp_path / "out")
    plan = sw.validate_spec(_spec(tmp_path, method="bayes", run_cap=3))
    assert plan.cap == 3


def test_missing_metric_bad_command_and_clashing_override(tmp_path, no_launch):
    with pytest.raises(ConfigError, match="missing 'metric"):
        sw.run_sweep(_spec(tmp_path, metric=None), out=tmp_path / "out")
    with pytest.raises(ConfigError, match="goal"):
        sw.run_sweep(_spec(tmp_path, metric={"name": "val/map_all"}), out=tmp_path / "out")
    with pytest.raises(ConfigError, match="no experiment"):
        sw.run_sweep(_spec(tmp_path, command=["${env}", "sketchquant", "train", "${args_no_hyphens}"]))
    with pytest.raises(ConfigError, match="unknown experiment 'zs_sbri'"):
        sw.run_sweep(_spec(tmp_path, command=["sketchquant", "train", "zs_sbri", "${args_no_hyphens}"]))
    with pytest.raises(ConfigError, match=r"model\.lambda_da is swept"):
        sw.run_sweep(_spec(tmp_path), overrides=["model.lambda_da=0.5"])
    with pytest.raises(ConfigError, match="val/"):
        sw.run_sweep(_spec(tmp_path, metric={"name": "train/loss", "goal": "minimize"}))


def test_test_metric_warns_and_is_read_from_test_results(tmp_path):
    with pytest.warns(UserWarning, match="zero-shot protocol"):
        plan = sw.validate_spec(_spec(tmp_path, metric={"name": "test/map_all", "goal": "maximize"}))
    assert plan.metric_source == "metrics"


def test_metric_becomes_the_monitor(tmp_path):
    plan = sw.validate_spec(_spec(tmp_path, metric={"name": "val/map_200", "goal": "maximize"}))
    assert "monitor=val/map_200" in plan.overrides
    plan = sw.validate_spec(_spec(tmp_path))  # zs_sbir already monitors val/map_all (max)
    assert not any(o.startswith("monitor") for o in plan.overrides)


@pytest.mark.parametrize(
    "name", ["zs_sbir_losses", "zs_sbir_prototypes", "zs_sbir_folder_lr", "quant_alpha", "quant_windows"]
)
def test_shipped_specs_are_valid(name):
    path = SHIPPED_CONFIGS / "sweeps" / f"{name}.yaml"
    plan = sw.validate_spec(path)
    assert plan.metric.startswith("val/") and plan.metric_source == "val"
    assert plan.method == "grid"
    sizes = [len(v) for v in plan.candidates.values()]
    assert plan.cap == len(sw.plan_grid(plan.spec)) == int(__import__("math").prod(sizes))
    assert not plan.extra  # the metric is each experiment's own monitor
    assert sw.validate_spec(name).path == path  # `sketchquant sweep <name>` finds configs/sweeps/<name>.yaml


# --------------------------------------------------------------------------------------------------
# the planner (wandb's sweeps engine)


def test_grid_plan_is_the_full_cartesian_product(tmp_path):
    params = {
        "model.lambda_da": {"values": [0.0, 0.1, 1.0]},
        "model.lambda_kd": {"values": [0.5, 1.0]},
        "eval.map_at": {"values": [["all"], ["all", 200]]},
    }
    spec = yaml.safe_load(_spec(tmp_path, parameters=params).read_text())
    trials = sw.plan_grid(spec)
    assert len(trials) == 12
    got = {tuple(json.dumps(t[k]) for k in sorted(params)) for t in trials}
    want = set(itertools.product(*[[json.dumps(v) for v in params[k]["values"]] for k in sorted(params)]))
    assert got == want
    assert sw.trial_args({"eval.map_at": ["all", 200], "a.b": None}) == ["eval.map_at=[all, 200]", "a.b=null"]


# --------------------------------------------------------------------------------------------------
# running (the subprocess replaced)


def test_failed_trial_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    calls: list = []

    def score(p):
        if p["model.lambda_da"] == "0.1" and p["model.lambda_kd"] == "0.5":
            return 1  # crashed
        if p["model.lambda_da"] == "0.1":
            return None  # exit 0 but no results.json
        return 0.5 + float(p["model.lambda_kd"]) / 10

    _fake_launcher(monkeypatch, score, calls)
    out = tmp_path / "sweep"
    summary = sw.run_sweep(_spec(tmp_path), out=out, overrides=["trainer.max_epochs=1"])
    assert len(calls) == 4
    assert all(c["cmd"][-1] == "trainer.max_epochs=1" and c["env"]["WANDB_RUN_GROUP"] == "t" for c in calls)
    assert [c["run_dir"].name for c in calls] == ["trial-001", "trial-002", "trial-003", "trial-004"]
    states = {json.dumps(t["params"], sort_keys=True): t["state"] for t in summary["trials"]}
    assert sorted(states.values()) == ["failed", "failed", "finished", "finished"]
    assert summary["best_config"] == {"model.lambda_da": 0.0, "model.lambda_kd": 1.0}
    assert summary["best"]["metric"] == pytest.approx(0.6)
    failed = [t for t in summary["trials"] if t["state"] == "failed"]
    assert any("exit code 1" in t["error"] for t in failed) and any(
        "results.json" in t["error"] for t in failed
    )

    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["best_config"] == summary["best_config"] and on_disk["complete"] is True
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert len(rows) == 4 and {r["state"] for r in rows} == {"finished", "failed"}
    assert {"model.lambda_da", "model.lambda_kd", "val/map_all", "run_dir", "seconds"} <= set(rows[0])
    assert (out / "sweep.yaml").read_text() == (tmp_path / "spec.yaml").read_text()
    assert not list(out.glob(".*.tmp"))


def test_count_caps_a_grid_and_minimize(tmp_path, monkeypatch):
    calls: list = []
    _fake_launcher(monkeypatch, lambda p: float(p["model.lambda_da"]) + float(p["model.lambda_kd"]), calls)
    spec = _spec(tmp_path, metric={"name": "val/map_all", "goal": "minimize"})
    summary = sw.run_sweep(spec, count=3, out=tmp_path / "s")
    assert len(calls) == 3 and summary["n_trials"] == 3
    assert "monitor_mode=min" in calls[0]["cmd"]  # the checkpoint is chosen the way the sweep ranks
    assert summary["best"]["metric"] == min(t["metric"] for t in summary["trials"])


def test_bayes_gets_failed_runs_and_keeps_going(tmp_path, monkeypatch):
    calls: list = []
    _fake_launcher(
        monkeypatch, lambda p: 137 if len(calls) == 2 else 1 - (float(p["model.lambda_da"]) - 0.3) ** 2, calls
    )
    spec = _spec(tmp_path, method="bayes", parameters={"model.lambda_da": {"min": 0.0, "max": 1.0}})
    summary = sw.run_sweep(spec, count=4, out=tmp_path / "s")
    assert [t["state"] for t in summary["trials"]].count("failed") == 1
    assert summary["n_finished"] == 3 and len({c["params"]["model.lambda_da"] for c in calls}) == 4


def test_all_failed_raises_after_writing_the_summary(tmp_path, monkeypatch):
    _fake_launcher(monkeypatch, lambda p: -9)
    with pytest.raises(sw.SweepError, match="all 4 trials failed"):
        sw.run_sweep(_spec(tmp_path), out=tmp_path / "s")
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["best"] is None and {t["error"].split(" (")[0] for t in summary["trials"]} == {
        "killed by signal 9"
    }


def test_parallel_workers_are_pinned_to_gpus(tmp_path, monkeypatch):
    import threading
    import time

    active: dict[str, int] = {}
    lock = threading.Lock()

    def launch(cmd, env, run_dir):
        dev = env["CUDA_VISIBLE_DEVICES"]
        with lock:
            active[dev] = active.get(dev, 0) + 1
            assert active[dev] == 1, "two trials on one GPU at once"
        time.sleep(0.05)
        with lock:
            active[dev] -= 1
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "results.json").write_text(json.dumps({"val": {"val/map_all": 0.5}, "metrics": {}}))
        return 0

    monkeypatch.setattr(sw, "_gpu_ids", lambda: ["3", "5"])
    monkeypatch.setattr(sw, "launch_trial", launch)
    summary = sw.run_sweep(_spec(tmp_path), workers=2, out=tmp_path / "s")
    assert summary["n_finished"] == 4
    assert {t["device"] for t in summary["trials"]} == {"3", "5"}


def test_real_subprocess_trials(tmp_path, monkeypatch):
    """The launcher itself: a subprocess per trial, its own run folder, output in stdout.log."""
    script = (
        "import json, os, sys; d = os.environ['SKETCHQUANT_RUN_DIR']; args = dict(a.split('=') for a in sys.argv[1:]);"
        "print('hello from', d); da = float(args['model.lambda_da']);"
        "sys.exit(3) if da > 0 else open(os.path.join(d, 'results.json'), 'w').write("
        "json.dumps({'val': {'val/map_all': float(args['model.lambda_kd'])}, 'metrics': {}}))"
    )
    monkeypatch.setattr(
        sw, "trial_command", lambda plan, params: [sys.executable, "-c", script, *sw.trial_args(params)]
    )
    summary = sw.run_sweep(_spec(tmp_path), out=tmp_path / "s")
    trials = {Path(t["run_dir"]).name: t for t in summary["trials"]}
    assert len(trials) == 4
    for name, t in trials.items():
        log = (tmp_path / "s" / "trials" / name / "stdout.log").read_text()
        assert "hello from" in log and name in log
        assert t["state"] == ("failed" if t["params"]["model.lambda_da"] > 0 else "finished")
    assert summary["best_config"] == {"model.lambda_da": 0.0, "model.lambda_kd": 1.0}


def test_online_fails_fast_without_login(tmp_path, monkeypatch):
    import wandb

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setattr(sw_online, "wandb_api_key", lambda: None)
    monkeypatch.setattr(wandb, "sweep", lambda *a, **k: pytest.fail("contacted wandb"))
    with pytest.raises(ConfigError, match="wandb login"):
        sw.run_sweep(_spec(tmp_path), online=True)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    with pytest.raises(ConfigError, match="WANDB_MODE=disabled"):
        sw.run_sweep(_spec(tmp_path), online=True)


def test_online_spec_carries_overrides_and_wandb_logger(tmp_path):
    plan = sw.validate_spec(_spec(tmp_path), overrides=["trainer.max_epochs=2"])
    spec = sw.online_spec(plan)
    assert spec["command"] == [*COMMAND[:4], "trainer.max_epochs=2", "logger=wandb", "${args_no_hyphens}"]


# --------------------------------------------------------------------------------------------------
# end to end


TINY = tiny_overrides(
    "zs_sbir",
    **{
        "data.generator.photos_per_class": 6,
        "data.generator.sketches_per_class": 6,
        "trainer.limit_val_batches": 2,
        "trainer.limit_test_batches": 2,
        "eval.grid": "true",
    },
)


@pytest.mark.slow
def test_two_trial_offline_grid_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = _spec(tmp_path, parameters={"model.lambda_da": {"values": [0.0, 0.5]}})
    out = tmp_path / "sweep"
    summary = sw.run_sweep(spec, out=out, workers=2, overrides=[*TINY, f"data.root={tmp_path / 'glyphs'}"])
    trials = sorted((out / "trials").iterdir())
    assert [t.name for t in trials] == ["trial-001", "trial-002"]
    for t in summary["trials"]:
        assert t["state"] == "finished", (Path(t["run_dir"]) / "stdout.log").read_text()[-3000:]
        assert (Path(t["run_dir"]) / "results.json").is_file() and (
            Path(t["run_dir"]) / "config.yaml"
        ).is_file()
        assert 0.0 <= t["metric"] <= 1.0 and t["test"]
    assert summary["best_config"]["model.lambda_da"] in (0.0, 0.5)
    assert (out / "summary.csv").is_file() and os.path.getsize(out / "summary.json") > 0


# --------------------------------------------------------------------------------------------------
# every trial is built before the first one starts


def test_trial_that_cannot_be_built_stops_the_sweep_before_any_trial(tmp_path, no_launch):
    """``alpha.t2`` equal to ``t1`` composes fine but the α ramp refuses it when a trial builds it."""
    spec = {
        "name": "bad_alpha",
        "method": "grid",
        "metric": {"name": "val/codes/map_1000", "goal": "maximize"},
        "parameters": {"model.alpha.t1": {"value": 2.0}, "model.alpha.t2": {"values": [4.0, 2.0]}},
        "command": ["${env}", "sketchquant", "train", "quantization", "${args_no_hyphens}"],
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=r"trial model\.alpha\.t1=2\.0 model\.alpha\.t2=2\.0 .*t2 > t1"):
        sw.run_sweep(path, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_window_layout_that_does_not_fit_names_the_trial(tmp_path, no_launch):
    spec = {
        "name": "bad_windows",
        "method": "grid",
        "metric": {"name": "val/codes/map_1000", "goal": "maximize"},
        "parameters": {"model.kernel": {"values": [[2, 2], [9, 9]]}},
        "command": ["${env}", "sketchquant", "train", "quantization", "${args_no_hyphens}"],
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=r"trial model\.kernel=\[9, 9\] cannot be built"):
        sw.run_sweep(path, out=tmp_path / "out")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(p.stem for p in (SHIPPED_CONFIGS / "sweeps").glob("*.yaml")))
def test_every_shipped_spec_builds_every_trial(name):
    plan = sw.validate_spec(SHIPPED_CONFIGS / "sweeps" / f"{name}.yaml")
    assert sw.check_trials(plan) == len(sw.plan_grid(plan.spec))
