"""``eval_features`` on hand-made npz files."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from sketchquant.core.retrieval.metrics import hashing_metrics, sbir_metrics
from sketchquant.core.retrieval.npz_eval import eval_features


def _write(tmp_path, name, feats, labels, **extra):
    path = tmp_path / name
    np.savez(path, features=feats, labels=labels, **extra)
    return path


def _sbir_files(tmp_path):
    rng = np.random.default_rng(0)
    gl = rng.integers(0, 3, 60)
    ql = rng.integers(0, 3, 12)
    centres = rng.normal(size=(3, 8))
    g = (centres[gl] + rng.normal(size=(60, 8))).astype(np.float32)
    q = (centres[ql] + rng.normal(size=(12, 8))).astype(np.float32)
    return _write(tmp_path, "query.npz", q, ql), _write(tmp_path, "gallery.npz", g, gl), (q, ql, g, gl)


def test_sbir_json_only_json_on_stdout(tmp_path, capsys):
    qp, gp, (q, ql, g, gl) = _sbir_files(tmp_path)
    res = eval_features(qp, gp, protocol="sbir", ks=(5, 20), as_json=True)
    out = capsys.readouterr().out
    parsed = json.loads(out)  # the whole of stdout is one JSON object
    assert out.count("\n") == 1
    for key in (
        "map_all",
        "map_5",
        "map_20",
        "p_5",
        "p_20",
        "map_all_micro",
        "p_20_micro",
        "num_queries",
        "num_queries_no_relevant",
        "protocol",
        "ap",
        "query",
        "gallery",
        "num_gallery",
    ):
        assert key in parsed, key
    assert parsed == json.loads(json.dumps(res))
    want = sbir_metrics(q, ql, g, gl, map_at=("all", 5, 20), p_at=(5, 20))
    assert parsed["map_all"] == pytest.approx(want["map_all"]) and parsed["p_5"] == pytest.approx(want["p_5"])
    assert parsed["protocol"] == "sbir" and parsed["ap"] == "voc" and parsed["num_queries"] == 12


def test_sbir_table_and_standard_ap(tmp_path):
    qp, gp, _ = _sbir_files(tmp_path)
    buf = io.StringIO()
    res = eval_features(qp, gp, ks=(10,), ap="standard", stream=buf)
    text = buf.getvalue()
    assert "map_all" in text and "p_10" in text and res["ap"] == "standard"


def test_hashing_multilabel(tmp_path, capsys):
    rng = np.random.default_rng(1)
    ql = (rng.random((10, 5)) < 0.3).astype(np.uint8)
    gl = (rng.random((50, 5)) < 0.3).astype(np.uint8)
    q = rng.integers(0, 4, (10, 6)).astype(np.uint8)
    g = rng.integers(0, 4, (50, 6)).astype(np.uint8)
    qp = _write(tmp_path, "q.npz", q, ql)
    gp = _write(tmp_path, "g.npz", g, gl)
    res = eval_features(qp, gp, protocol="hashing", ks=(10,), as_json=True)
    parsed = json.loads(capsys.readouterr().out)
    assert {"map_all", "map_10", "p_10"} <= set(parsed)
    want = hashing_metrics(q, ql, g, gl, map_at=("all", 10), p_at=(10,))
    assert res["map_10"] == pytest.approx(want["map_10"]) and parsed["map_all"] == pytest.approx(
        want["map_all"]
    )


def test_errors_name_file_and_field(tmp_path):
    qp, gp, (q, ql, g, gl) = _sbir_files(tmp_path)
    bad = _write(tmp_path, "nolabels.npz", q, ql)
    np.savez(bad, features=q)
    with pytest.raises(ValueError, match=r"nolabels.npz: missing field 'labels'"):
        eval_features(bad, gp)
    nan = q.copy()
    nan[2, 3] = np.nan
    with pytest.raises(ValueError, match=r"nan.npz: field 'features' contains 1 non-finite"):
        eval_features(_write(tmp_path, "nan.npz", nan, ql), gp)
    with pytest.raises(
        ValueError, match=r"short.npz: field 'labels' has 11 entries but 'features' has 12 rows"
    ):
        eval_features(_write(tmp_path, "short.npz", q, ql[:11]), gp)
    with pytest.raises(ValueError, match=r"flat.npz: field 'features' must be N × d"):
        eval_features(_write(tmp_path, "flat.npz", q[:, 0], ql), gp)
    with pytest.raises(ValueError, match=r"query.npz has feature dimension 8 but .*narrow.npz has 4"):
        eval_features(qp, _write(tmp_path, "narrow.npz", g[:, :4], gl))
    with pytest.raises(ValueError, match=r"multi.npz: field 'labels' must be N class ids"):
        eval_features(_write(tmp_path, "multi.npz", q, np.eye(3)[ql]), gp)
    with pytest.raises(FileNotFoundError, match="missing.npz: no such file"):
        eval_features(tmp_path / "missing.npz", gp)
    with pytest.raises(ValueError, match="unknown protocol"):
        eval_features(qp, gp, protocol="zsir")
    with pytest.raises(ValueError, match="--k values must be positive"):
        eval_features(qp, gp, ks=(0,))
    with pytest.raises(ValueError, match="unknown ap 'x'"):
        eval_features(qp, gp, ap="x")
