"""What the wandb dashboard holds, read back from the offline run file of a tiny run of each method
(:mod:`wandb_records`), and what happens when logging to it fails (a :class:`DashboardWarning` naming
the part; the run and the other parts go on)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_overrides
from pytorch_lightning.loggers import WandbLogger
from wandb_records import config_of, finished_run_file, history_rows, logged_keys

import sketchquant.callbacks.retrieval_visuals as visuals
from sketchquant.app.methods import compose, method_of
from sketchquant.callbacks.config import EvalConfig
from sketchquant.callbacks.retrieval_visuals import DashboardWarning, draw_pictures, log_dashboard
from sketchquant.core.batch import DOMAIN, INDEX, LABEL, PHOTO, SKETCH, FeatureSets

#: every loss component each method logs (train/<name>_step per step, train/<name>_epoch per epoch)
LOSSES = {"zs_sbir": ("loss", "cls", "kd", "da"), "quantization": ("loss", "cls", "quant")}


# ------------------------------------------------------------------------------------------------
# a tiny offline wandb run of each method, read back from its run-<id>.wandb file


@pytest.fixture(scope="module", params=["zs_sbir", "quantization"])
def wandb_run(request, tmp_path_factory):
    from sketchquant.app.train import train

    experiment = request.param
    tmp = tmp_path_factory.mktemp(f"wandb-{experiment}")
    os.environ.pop("SKETCHQUANT_RUN_DIR", None)
    os.environ["WANDB_MODE"] = "offline"
    extra = {"logger": "wandb", "name": "wb", "eval.grid": "true", "trainer.log_every_n_steps": 1}
    cfg = compose(experiment, tiny_overrides(experiment, tmp, **extra))
    out = train(cfg)
    run_dir = Path(out["run_dir"])
    path = finished_run_file(run_dir)
    return SimpleNamespace(
        experiment=experiment,
        cfg=cfg,
        run_dir=run_dir,
        files=path.parent / "files",
        rows=history_rows(path),
        keys=logged_keys(path),
        config=config_of(path),
    )


def _last(run, key: str):
    values = [row[key] for row in run.rows if key in row]
    assert values, f"{key} was never logged to wandb; logged: {sorted(run.keys)}"
    return values[-1]


def _expected_metrics(cfg) -> list[str]:
    """Every retrieval metric the evaluator computes: each feature set's mAP@k and P@k, and chance."""
    feats: FeatureSets = method_of(cfg).features
    out = []
    for stage in ("val", "test"):
        names = list(feats.embeddings)
        if stage == "test" and cfg.eval.prototypes:
            names += list(feats.derived)
        for name in names:
            prefix = feats.prefix(stage, name)
            out += [f"{prefix}map_{k}" for k in cfg.eval.map_at]
            out += [f"{prefix}p_{k}" for k in cfg.eval.p_at]
        out.append(f"{stage}/chance_map_all")
    return out


@pytest.mark.slow
def test_every_loss_component_and_the_learning_rate(wandb_run):
    for name in LOSSES[wandb_run.experiment]:
        for key in (f"train/{name}_step", f"train/{name}_epoch"):
            assert isinstance(_last(wandb_run, key), float), key
    lrs = sorted(k for k in wandb_run.keys if k.startswith("lr-"))
    assert lrs, f"no learning rate logged: {sorted(wandb_run.keys)}"
    assert all(_last(wandb_run, k) > 0 for k in lrs)


@pytest.mark.slow
def test_alpha_is_logged_for_method_a_only(wandb_run):
    if wandb_run.experiment == "quantization":
        steps = [row["train/alpha"] for row in wandb_run.rows if "train/alpha" in row]
        assert len(steps) == int(wandb_run.cfg.trainer.limit_train_batches)  # one per training step
        assert all(0.0 <= a <= float(wandb_run.cfg.model.alpha.final) for a in steps)
    else:
        assert "train/alpha" not in wandb_run.keys


@pytest.mark.slow
def test_every_retrieval_metric(wandb_run):
    for key in _expected_metrics(wandb_run.cfg):
        assert isinstance(_last(wandb_run, key), (int, float)), key
    # and every value the CSV logger got (the same log calls) reached wandb too
    with open(wandb_run.run_dir / "metrics.csv", newline="") as f:
        columns = set(next(csv.reader(f))) - {"step"}
    assert columns <= wandb_run.keys, sorted(columns - wandb_run.keys)


@pytest.mark.slow
def test_retrieval_grid_images(wandb_run):
    for stage in ("val", "test"):
        image = _last(wandb_run, f"{stage}/retrieval_grid")
        assert image["_type"] in ("images/separated", "image-file"), image
        names = image.get("filenames") or [image["path"]]
        assert all((wandb_run.files / name).is_file() for name in names), names


@pytest.mark.slow
def test_precision_recall_table_per_feature_set(wandb_run):
    feats: FeatureSets = method_of(wandb_run.cfg).features
    for stage in ("val", "test"):
        for name in feats.embeddings:
            key = f"{stage}/{name}/pr_curve"
            table = _last(wandb_run, f"{key}_table")
            assert table["_type"] == "table-file", table
            content = json.loads((wandb_run.files / table["path"]).read_text())
            assert content["columns"] == ["recall", "precision"]
            assert len(content["data"]) == 11  # interpolated precision at 11 recall levels
            recall = [r for r, _ in content["data"]]
            assert recall == sorted(recall) and recall[0] == 0.0 and recall[-1] == 1.0
            assert all(0.0 <= p <= 1.0 for _, p in content["data"])
            # the line plot over it: a custom chart in the run's config
            assert key in wandb_run.config["_wandb"]["visualize"], key


@pytest.mark.slow
def test_code_histogram_and_zero_fraction_for_method_a_only(wandb_run):
    codes = method_of(wandb_run.cfg).features.codes
    assert bool(codes) == (wandb_run.experiment == "quantization")
    for stage in ("val", "test"):
        for name in codes:
            hist = _last(wandb_run, f"{stage}/{name}/histogram")
            assert hist["_type"] == "histogram" and sum(hist["values"]) > 0
            assert len(hist["bins"]) == len(hist["values"]) + 1
            assert 0.0 <= _last(wandb_run, f"{stage}/{name}/zero_fraction") <= 1.0
    if not codes:
        assert not any(k.endswith(("/histogram", "/zero_fraction")) for k in wandb_run.keys)


# ------------------------------------------------------------------------------------------------
# a failure while logging to the dashboard: a warning naming what failed, the rest still logged


class RecordingWandb(WandbLogger):
    """A WandbLogger whose run only records what is logged (no wandb process)."""

    def __init__(self, fail_on_log: bool = False) -> None:  # no super().__init__: nothing to start
        self.logged: list[dict] = []
        self.fail_on_log = fail_on_log
        self._experiment = self

    def log(self, payload: dict) -> None:  # the "run"
        if self.fail_on_log:
            raise ConnectionError("wandb service went away")
        self.logged.append(payload)


def _data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n = 24
    domain = torch.tensor([SKETCH] * 8 + [PHOTO] * 16)
    return {
        "emb/codes": torch.randint(0, 4, (n, 6), generator=g).float(),
        "emb/float": torch.randn(n, 6, generator=g),
        LABEL: torch.arange(n) % 3,
        DOMAIN: domain,
        INDEX: torch.arange(n),
    }


def _trainer(logger) -> SimpleNamespace:
    return SimpleNamespace(loggers=[logger], global_step=7, current_epoch=0, datamodule=None)


def test_a_failing_curve_is_a_warning_naming_it_and_the_rest_is_logged(monkeypatch):
    real = visuals.precision_recall_curve

    def broken_for_codes(q, *args, **kwargs):
        if q.shape[1] == 6 and torch.equal(q, q.round()):  # the integer codes
            raise ValueError("no curve today")
        return real(q, *args, **kwargs)

    monkeypatch.setattr(visuals, "precision_recall_curve", broken_for_codes)
    logger = RecordingWandb()
    with pytest.warns(
        DashboardWarning, match=r"wandb test/codes/pr_curve skipped: ValueError: no curve today"
    ):
        log_dashboard(_trainer(logger), _data(), "test", normalize=True, codes=("codes",))
    (payload,) = logger.logged
    assert set(payload) == {
        "test/float/pr_curve",
        "test/codes/histogram",
        "test/codes/zero_fraction",
        "trainer/global_step",
    }


def test_a_failing_send_is_a_warning_naming_what_was_not_sent():
    with pytest.warns(
        DashboardWarning, match=r"sending test/codes/pr_curve, .* to wandb skipped: ConnectionError"
    ):
        log_dashboard(_trainer(RecordingWandb(fail_on_log=True)), _data(), "test", True, codes=("codes",))


def test_draw_pictures_never_raises_and_names_each_failed_part(monkeypatch):
    def grid_fails(*args, **kwargs):
        raise OSError("disk full")

    def dashboard_fails(*args, **kwargs):
        raise RuntimeError("wandb is not installed")

    monkeypatch.setattr(visuals, "log_grid", grid_fails)
    monkeypatch.setattr(visuals, "log_dashboard", dashboard_fails)
    features = FeatureSets(embeddings=("codes", "float"), gallery=("codes",), codes=("codes",))
    with pytest.warns(DashboardWarning) as caught:
        draw_pictures(_trainer(RecordingWandb()), _data(), "val", EvalConfig(grid=True), features, None)
    assert [str(w.message) for w in caught] == [
        "val retrieval grid skipped: OSError: disk full",
        "val wandb dashboard skipped: RuntimeError: wandb is not installed",
    ]
