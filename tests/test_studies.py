"""benchmarks/studies.py: a pass that only summarises earlier runs keeps the record of the pass that ran them; kept runs are reused only with the settings they were made with."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _studies():
    spec = importlib.util.spec_from_file_location("studies", ROOT / "benchmarks" / "studies.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["studies"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


studies = _studies()

TRAINING = {
    "commit": "aaa",
    "command": "python benchmarks/studies.py x",
    "date": "d1",
    "machine": {"cores": 2},
}
NOW = {"commit": "bbb", "command": "python benchmarks/studies.py x", "date": "d2", "machine": {"cores": 2}}


def test_a_summarising_pass_keeps_the_training_header(tmp_path):
    out = tmp_path / "study_x.json"
    out.write_text(json.dumps({**TRAINING, "load_before": 0.5, "load_after": 1.9, "seeds": [0, 1, 2]}))
    meta, kept = studies.header(out, {**NOW, "load_before": 3.0}, [0, 1, 2], trained=False)
    assert meta == {**TRAINING, "load_before": 0.5}
    assert kept == {
        "load_after": 1.9,
        "summarised_again": {"commit": "bbb", "command": NOW["command"], "date": "d2"},
    }


def test_a_pass_that_trained_or_changed_seeds_writes_its_own(tmp_path):
    out = tmp_path / "study_x.json"
    now = {**NOW, "load_before": 3.0}
    assert studies.header(out, now, [0], trained=False) == (now, {})  # no earlier record
    out.write_text(json.dumps({**TRAINING, "load_before": 0.5, "load_after": 1.9, "seeds": [0, 1, 2]}))
    assert studies.header(out, now, [0, 1, 2], trained=True) == (now, {})
    assert studies.header(out, now, [0, 1], trained=False) == (now, {})


def test_studies_run_before_a_recipe_change_pin_the_old_setting():
    """The folder recipe moved from 96 px after image_size_seen: the studies run at 96 px pin it (set
    overrides come first, a variant's own size later and wins), so they repeat as they were run."""
    for name in ("kd_seen", "cosine_seen", "image_size_seen", "folder_recipe_seen"):
        for overrides in studies.STUDIES[name].sets.values():
            assert "data.image_size=96" in overrides, (name, overrides)
    components = studies.STUDIES["components"].sets
    assert (
        "data.image_size=96" in components["emoji_drawings"]
        and "data.image_size=96" not in components["glyphs"]
    )
    assert studies.STUDIES["image_size_seen"].variants["size_128"] == ["data.image_size=128"]
    assert "data.image_size=96" not in str(studies.STUDIES["folder_recipe"].sets)  # the check runs as shipped


def test_a_kept_run_made_with_other_settings_is_refused_not_reused(tmp_path):
    """A study reuses a run folder that holds results.json; when the experiment file has moved on since
    (the folder recipe's image size did), the kept run is refused by name, with what changed."""
    from omegaconf import OmegaConf

    from sketchquant.app.methods import compose

    run = tmp_path / "emoji" / "recipe" / "seed0" / "zs_sbir_folder" / "20260101-000000"
    run.mkdir(parents=True)
    asked = [f"data.root={tmp_path}", "seed=0", f"run_dir={tmp_path / 'emoji' / 'recipe' / 'seed0'}"]
    OmegaConf.save(compose("zs_sbir_folder", [*asked, "data.image_size=128"]), run / "config.yaml")
    assert studies.stale_settings(run, "zs_sbir_folder", [*asked, "data.image_size=128"]) == []
    assert studies.stale_settings(run, "zs_sbir_folder", [*asked, "data.image_size=160"]) == [
        "data.image_size: 128 -> 160"
    ]
    with pytest.raises(
        SystemExit, match=r"20260101-000000 was run with other settings .*data\.image_size: 128 -> 160"
    ):
        studies.refuse_stale(run, "zs_sbir_folder", [*asked, "data.image_size=160"])
    studies.refuse_stale(run, "zs_sbir_folder", [*asked, "data.image_size=128"])  # the same settings: reused
