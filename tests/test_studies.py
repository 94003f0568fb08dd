"""benchmarks/studies.py: a pass that only summarises earlier runs keeps the record of the pass that ran them."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

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
