"""``model.weight_ensemble`` (WiSE-FT): the interpolation itself, and a run that tests and serves the
ensembled weights while its fine-tuned checkpoint stays as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import initial_weights

from sketchquant.app.checkpoints import read_checkpoint
from sketchquant.app.methods import compose
from sketchquant.app.train import evaluate, train
from sketchquant.lightning_modules.components.weight_ensemble import interpolate_state


def test_interpolate_state_by_hand():
    initial = {"w": torch.tensor([0.0, 2.0]), "n": torch.tensor(0)}
    tuned = {"w": torch.tensor([4.0, 6.0]), "n": torch.tensor(5), "cls": torch.tensor([1.5])}
    out = interpolate_state(initial, tuned, 0.25)
    assert out["w"].tolist() == [1.0, 3.0]  # 0.75·[0, 2] + 0.25·[4, 6]
    assert out["n"].item() == 5 and out["n"].dtype == torch.int64  # integer buffers: fine-tuned
    assert out["cls"].tolist() == [1.5]  # not in the pretrained weights: fine-tuned
    assert torch.equal(interpolate_state(initial, tuned, 1.0)["w"], tuned["w"])
    assert torch.equal(interpolate_state(initial, tuned, 0.0)["w"], initial["w"])
    half = interpolate_state({"h": torch.zeros(2, dtype=torch.float16)}, {"h": torch.ones(2).half()}, 0.5)
    assert half["h"].dtype == torch.float16 and half["h"].tolist() == [0.5, 0.5]


@pytest.mark.parametrize(
    ("initial", "tuned", "alpha", "error", "match"),
    [
        (
            {"w": torch.ones(2)},
            {"w": torch.ones(2)},
            1.5,
            ValueError,
            r"weight_ensemble must be in \[0, 1\].*1.5",
        ),
        ({"w": torch.ones(2)}, {"v": torch.ones(2)}, 0.5, KeyError, "lack 1 pretrained entries.*'w'"),
        (
            {"w": torch.ones(2)},
            {"w": torch.ones(3)},
            0.5,
            ValueError,
            r"w: pretrained shape \(2,\) != fine-tuned \(3,\)",
        ),
    ],
)
def test_interpolate_state_refuses(initial, tuned, alpha, error, match):
    with pytest.raises(error, match=match):
        interpolate_state(initial, tuned, alpha)


def test_run_tests_and_serves_the_ensemble(tiny_zs, monkeypatch):
    monkeypatch.delenv("SKETCHQUANT_RUN_DIR", raising=False)
    cfg = compose("zs_sbir", tiny_zs(name="wise", **{"model.weight_ensemble": 0.5}))
    out = train(cfg)
    run = Path(out["run_dir"])
    results = json.loads((run / "results.json").read_text())
    ensemble = Path(results["checkpoint"])
    assert ensemble.parent == run / "checkpoints" and ensemble.name.startswith("ensemble-best-epoch")
    tuned_path = ensemble.with_name(ensemble.name.removeprefix("ensemble-"))
    saved, tuned = read_checkpoint(ensemble), read_checkpoint(tuned_path)
    assert saved["weight_ensemble"] == {"alpha": 0.5, "fine_tuned": tuned_path.name}

    initial = initial_weights(cfg)  # the pretrained weights, rebuilt as train() builds them
    trunk = "net.backbone.conv_stem.weight"
    assert not torch.equal(tuned["state_dict"][trunk], initial[trunk])  # training moved it
    for key, value in saved["state_dict"].items():
        if key.startswith("net.classifier."):  # random at the start: kept as fine-tuned
            assert torch.equal(value, tuned["state_dict"][key]), key
        elif value.is_floating_point():
            assert torch.allclose(value, 0.5 * initial[key] + 0.5 * tuned["state_dict"][key], atol=1e-6), key

    # what the run reported is what the ensembled file gives
    again = evaluate(str(ensemble))["test"]
    assert again["test/map_all"] == pytest.approx(results["metrics"]["test/map_all"], abs=1e-6)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("model.weight_ensemble", 1.5, r"model.weight_ensemble must be in \[0, 1\], got 1.5"),
        ("model.weight_ensemble", -0.5, r"model.weight_ensemble must be in \[0, 1\], got -0.5"),
        ("model.head_warmup_epochs", -1, "model.head_warmup_epochs must be >= 0, got -1"),
    ],
)
def test_bad_fine_tuning_options_stop_before_training(tiny_zs, key, value, match):
    """Refused when the module is built, not after a whole run (1.5 used to train plainly in silence)."""
    cfg = compose("zs_sbir", tiny_zs(**{key: value}))
    with pytest.raises(ValueError, match=match):
        initial_weights(cfg)
