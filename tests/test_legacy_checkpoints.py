"""Checkpoints written by sketchquant 0.1 (before the package was split into core and app) still load and
test to the numbers 0.1 itself reported. The two tiny checkpoints in tests/data/legacy/ were trained by
0.1's code on the tiny runs of tests/conftest.py; their results.json files are 0.1's test metrics. They load
weights-only, as every checkpoint is read now (sketchquant.app.checkpoints)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sketchquant.app.checkpoints import read_checkpoint
from sketchquant.app.train import evaluate

LEGACY = Path(__file__).parent / "data" / "legacy"
# the metrics that must not move: raw features (method B) and codes / float (method A)
CHECKED = {
    "zs_sbir": ["test/map_all", "test/map_200", "test/p_100", "test/proto/map_all", "test/fused/map_all"],
    "quantization": ["test/codes/map_1000", "test/float/map_1000", "test/codes/p_100"],
}
DATA_DIR = {"zs_sbir": "glyphs", "quantization": "scenes"}


@pytest.mark.parametrize("method", sorted(CHECKED))
def test_v01_checkpoint_evaluates_to_its_own_numbers(method, tmp_path):
    ckpt = LEGACY / f"{method}-v0.1.ckpt"
    expected = json.loads((LEGACY / f"{method}-v0.1.results.json").read_text())["metrics"]
    res = evaluate(str(ckpt), [f"data.root={tmp_path / DATA_DIR[method]}", f"run_dir={tmp_path / 'runs'}"])[
        "test"
    ]
    for key in CHECKED[method]:
        assert res[key] == pytest.approx(expected[key], abs=1e-6), key


@pytest.mark.parametrize("method", sorted(CHECKED))
def test_v01_checkpoint_loads_weights_only(method):
    """0.1's files hold nothing that needs arbitrary unpickling: no --trust-checkpoint needed."""
    ckpt = read_checkpoint(LEGACY / f"{method}-v0.1.ckpt")  # weights_only=True; raises otherwise
    assert ckpt["sketchquant"]["model"]["name"] == method and ckpt["state_dict"]
