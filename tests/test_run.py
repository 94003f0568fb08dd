"""Run folders, resume, determinism, the NaN guard and evaluate — through sketchquant.app.train on tiny configs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

import sketchquant.app.build as build
from sketchquant.app.checkpoints import load_checkpoint_config
from sketchquant.app.methods import compose
from sketchquant.app.rundir import find_resume
from sketchquant.app.train import evaluate, train
from sketchquant.callbacks.nan_guard import NonFiniteLossError
from sketchquant.core.config import ConfigError


@pytest.fixture(autouse=True)
def _fresh_run_dir_env(monkeypatch):
    monkeypatch.delenv("SKETCHQUANT_RUN_DIR", raising=False)


def _train(overrides):
    os.environ.pop("SKETCHQUANT_RUN_DIR", None)
    return train(compose("zs_sbir", overrides))


def test_run_folder_contents(tiny_zs, tmp_path):
    out = _train(tiny_zs(name="smoke", **{"trainer.log_every_n_steps": 1}))
    run = Path(out["run_dir"])
    assert run.parent == tmp_path / "runs" / "zs_sbir" and run.name.endswith("-smoke")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["embed_dim"] == 32 and saved["experiment"] == "zs_sbir"
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and any(p.startswith("best-epoch") for p in ckpts)
    assert not [p for p in ckpts if p.startswith("ensemble-")]  # model.weight_ensemble = 1: plain weights
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss_step", "train/cls_step", "train/kd_step", "train/da_step", "val/map_all"} <= set(
        header
    )
    assert "run folder" in (run / "train.log").read_text()
    results = json.loads((run / "results.json").read_text())
    assert {"test/map_all", "test/proto/map_all", "test/fused/map_all", "test/p_100"} <= set(
        results["metrics"]
    )
    assert "val/map_all" in results["val"]
    assert 0.0 <= results["metrics"]["test/map_all"] <= 1.0
    # the checkpoint carries the resolved config
    cfg, _ = load_checkpoint_config(run / "checkpoints" / "last.ckpt")
    assert cfg.model.embed_dim == 32


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


class _StopAfterFirstEpoch(pl.Callback):
    """Simulates a run killed after its first epoch (same config, so the lr schedule is the same)."""

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


@pytest.mark.slow
def test_resume_matches_straight_run(tiny_zs, tmp_path, monkeypatch):
    """A graceful stop at an epoch end, two epochs after the resume, DataLoader workers on (they used to
    prefetch the resumed epoch with the sampler's epoch 0); real kills: tests/test_resume_kill.py."""
    base = tiny_zs(seed=3, **{"data.num_workers": 2, "trainer.max_epochs": 3, "test_after_fit": "false"})
    straight = _train([*base, "name=straight"])
    original = build.build_callbacks  # build_trainer looks it up in sketchquant.app.build
    monkeypatch.setattr(
        build, "build_callbacks", lambda *a, **k: [*original(*a, **k), _StopAfterFirstEpoch()]
    )
    first = _train([*base, "name=resumed"])
    monkeypatch.setattr(build, "build_callbacks", original)
    assert torch.load(Path(first["run_dir"]) / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 0
    second = _train([*base, "name=resumed", "resume=auto"])
    assert second["run_dir"] == first["run_dir"]  # continued in the same folder
    a = _weights(Path(straight["run_dir"]) / "checkpoints" / "last.ckpt")
    b = _weights(Path(second["run_dir"]) / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    ck = torch.load(
        Path(second["run_dir"]) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    assert ck["epoch"] == 2 and ck["optimizer_states"] and ck["lr_schedulers"]
    # the logged epoch values after the resume are the straight run's (metrics.csv continues, no repeats)
    assert (Path(second["run_dir"]) / "metrics.csv").read_text() == (
        Path(straight["run_dir"]) / "metrics.csv"
    ).read_text()
    assert any(p.name.startswith("config.resume-") for p in Path(second["run_dir"]).iterdir())


def test_resume_path_errors(tiny_zs, tmp_path):
    with pytest.raises(ConfigError, match="no such checkpoint"):
        find_resume(compose("zs_sbir", tiny_zs(resume=str(tmp_path / "nope.ckpt"))))
    # resume=auto with nothing there starts fresh
    assert find_resume(compose("zs_sbir", tiny_zs(resume="auto"))) is None


def test_nan_guard_stops_and_keeps_last_checkpoint(tiny_zs, tmp_path, monkeypatch):
    out = _train(tiny_zs(name="nan", test_after_fit="false"))
    last = Path(out["run_dir"]) / "checkpoints" / "last.ckpt"
    before = last.read_bytes()

    from sketchquant.lightning_modules.zero_shot_sketch import ZeroShotSketchModule

    original = ZeroShotSketchModule._common_step

    def poisoned(self, batch, stage):
        res = original(self, batch, stage)
        if stage == "train":
            res["loss"] = res["loss"] * float("nan")
            res["losses"]["da"] = res["losses"]["da"] * float("inf")
        return res

    monkeypatch.setattr(ZeroShotSketchModule, "_common_step", poisoned)
    with pytest.raises(NonFiniteLossError) as err:
        _train(tiny_zs(name="nan", resume="auto", **{"trainer.max_epochs": 2}))
    msg = str(err.value)
    assert "global step 2" in msg and "epoch 1" in msg
    assert "cls =" in msg and "kd =" in msg and "da = inf" in msg and "not finite" in msg
    assert last.read_bytes() == before  # untouched


def test_evaluate_checkpoint_and_refuse_foreign_files(tiny_zs, tmp_path):
    out = _train(tiny_zs(name="ev", test_after_fit="false"))
    ckpt = Path(out["run_dir"]) / "checkpoints" / "last.ckpt"
    res = evaluate(str(ckpt), ["eval.prototypes=false"])
    assert "test/map_all" in res["test"] and "test/proto/map_all" not in res["test"]
    written = list(Path(out["run_dir"]).glob("eval-*.json"))
    assert len(written) == 1 and json.loads(written[0].read_text())["metrics"][
        "test/map_all"
    ] == pytest.approx(res["test"]["test/map_all"])
    with pytest.raises(ConfigError, match="needs a 'quantization' model"):
        load_checkpoint_config(ckpt, need="codes")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ConfigError, match="not written by sketchquant"):
        load_checkpoint_config(foreign)
    with pytest.raises(ConfigError, match="not found"):
        load_checkpoint_config(tmp_path / "missing.ckpt")


@pytest.mark.slow
def test_wandb_logger_offline_never_waits(tiny_zs, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = _train(tiny_zs(name="wb", logger="wandb", **{"eval.grid": "true", "trainer.log_every_n_steps": 1}))
    run = Path(out["run_dir"])
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
    assert list((run / "grids").glob("val-epoch*.png")) and list((run / "grids").glob("test-epoch*.png"))
    assert os.environ["WANDB_MODE"] == "offline"
