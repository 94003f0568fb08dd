"""The per-query file (docs/comparing.md): every reported metric recomputes from it exactly (``==``), for
raw / proto / fused (method B) and codes / float (method A); the metric functions' ``per_query=True``
changes no number; ``train`` and ``evaluate`` write the file beside their JSON and name it there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_overrides

from sketchquant.app.methods import compose
from sketchquant.app.rundir import queries_name, write_results
from sketchquant.app.train import evaluate, train
from sketchquant.core.retrieval import aggregate, per_query
from sketchquant.core.retrieval.metrics import hashing_metrics, sbir_metrics, sbir_metrics_from_distances
from sketchquant.core.retrieval.prototypes import prototype_retrieval_metrics

ROOT = Path(__file__).resolve().parent.parent
#: smaller method-A data than the default tiny run (the test split: 40 queries, 101 database images)
QUANT_SMALL = {
    "data.generator.num_train": 48,
    "data.generator.num_query": 40,
    "data.generator.num_database": 101,
}
#: what is logged at test besides retrieval metrics: the modules' losses, the PQ centres K used (a setting)
MODULE_LOSSES = {"zs_sbir": {"test/proto/pq_k"}, "quantization": {"test/loss", "test/cls", "test/quant"}}


def _train(experiment: str, tmp: Path, **extra) -> Path:
    os.environ.pop("SKETCHQUANT_RUN_DIR", None)
    try:
        out = train(compose(experiment, tiny_overrides(experiment, tmp, **extra)))
    finally:
        os.environ.pop("SKETCHQUANT_RUN_DIR", None)
    return Path(out["run_dir"])


def _trained_once(tmp_path_factory, experiment: str, **extra) -> Path:
    """A tiny run trained once per session, also when test_compare.py imports the fixture (pytest then
    holds two fixture objects: the run folder is found on disk the second time)."""
    base = tmp_path_factory.getbasetemp() / f"{experiment}-run"
    done = base / "run_dir.txt"
    if not done.is_file():
        base.mkdir(exist_ok=True)
        done.write_text(str(_train(experiment, base, **extra)))
    return Path(done.read_text())


@pytest.fixture(scope="session")
def zs_run(tmp_path_factory) -> Path:
    """One tiny method-B run (raw / proto / fused), trained and tested once for both test files."""
    return _trained_once(tmp_path_factory, "zs_sbir")


@pytest.fixture(scope="session")
def quant_run(tmp_path_factory) -> Path:
    return _trained_once(tmp_path_factory, "quantization", **QUANT_SMALL)


def _check_file(results_json: Path, losses: set[str]) -> dict:
    """The JSON names the file beside it; every number it reports recomputes exactly from the file."""
    results = json.loads(results_json.read_text())
    path = results_json.parent / results["queries"]
    assert path.is_file() and path.name == (
        "queries.npz" if results_json.name == "results.json" else results_json.stem + ".queries.npz"
    )
    record = per_query.load(path)
    got = per_query.recompute(path)
    # every retrieval number of results.json, and nothing else, is in the file
    assert set(got) == set(record["logged"]) == set(results["metrics"]) - losses
    for name, value in got.items():
        i = int(np.flatnonzero(record["logged"] == name)[0])
        assert value == record["logged_value"][i], name  # float64, as the evaluator computed it
        assert float(np.float32(value)) == results["metrics"][name], name  # as logged (float32)
    q = record["query_index"].size
    assert record["values"].shape == (record["feature_sets"].size, record["metrics"].size, q)
    assert record["values"].dtype == np.float64 and np.unique(record["query_index"]).size == q
    assert all(Path(p).is_file() for p in record["query_path"])
    assert record["class_names"].size >= 1 and record["n_relevant"].shape == (q,)
    return record


def test_method_b_file_recomputes_raw_proto_fused(zs_run):
    record = _check_file(zs_run / "results.json", MODULE_LOSSES["zs_sbir"])
    assert record["feature_sets"].tolist() == ["raw", "proto", "fused"]
    assert record["prefixes"].tolist() == ["test/", "test/proto/", "test/fused/"]
    assert str(record["protocol"]) == "sbir" and record["query_label"].ndim == 1
    kinds = dict(zip(record["logged"].tolist(), record["logged_reduction"].tolist()))
    assert kinds["test/fused/map_all"] == "class_mean" and kinds["test/fused/map_all_micro"] == "mean"
    assert kinds["test/chance_map_all"] == "chance" and kinds["test/num_queries"] == "count"
    # the queries' labels are the unseen classes' ids
    names = record["class_names"][record["query_label"]]
    assert all(Path(p).parent.name == n for p, n in zip(record["query_path"], names))


def test_method_a_file_recomputes_codes_and_float(quant_run):
    record = _check_file(quant_run / "results.json", MODULE_LOSSES["quantization"])
    assert record["feature_sets"].tolist() == ["codes", "float"]
    assert str(record["protocol"]) == "hashing" and record["query_label"].ndim == 2
    assert set(record["logged_reduction"].tolist()) == {"mean", "count", "no_relevant", "chance"}
    assert not np.isnan(record["values"]).any()  # hashing keeps every query (0 without a hit)


def test_evaluate_writes_its_own_file(zs_run):
    os.environ.pop("SKETCHQUANT_RUN_DIR", None)
    time.sleep(1.05)  # evaluation files are named by the second
    before = set(zs_run.glob("eval-*.json"))
    evaluate(str(zs_run / "checkpoints" / "last.ckpt"), ["eval.prototypes=false"])
    (written,) = set(zs_run.glob("eval-*.json")) - before
    record = _check_file(written, set())
    assert record["feature_sets"].tolist() == ["raw"]


def test_results_name_the_file_only_when_there_is_one(tmp_path):
    write_results(tmp_path, {}, "last weights")  # an untested run (test_after_fit=false)
    assert json.loads((tmp_path / "results.json").read_text())["queries"] is None
    (tmp_path / "eval-20260101-000000.queries.npz").write_bytes(b"")
    write_results(tmp_path, {}, "x.ckpt", name="eval-20260101-000000.json")
    assert json.loads((tmp_path / "eval-20260101-000000.json").read_text())["queries"] == (
        "eval-20260101-000000.queries.npz"
    )
    assert queries_name("results.json") == "queries.npz"


# ----------------------------------------------------------------------------------------------------
# the metric functions: per_query=True changes no number, and the values give every number back


def _sbir_data(seed=0, nq=90, ng=150, n_cls=6):
    rng = np.random.default_rng(seed)
    ql, gl = rng.integers(0, n_cls + 1, nq), rng.integers(0, n_cls, ng)  # class n_cls: no gallery item
    centres = rng.normal(size=(n_cls + 1, 8))
    q = (centres[ql] + rng.normal(size=(nq, 8))).astype(np.float32)
    g = (centres[gl] + rng.normal(size=(ng, 8))).astype(np.float32)
    g[40:60] = g[:20]  # ties
    return q, ql, g, gl


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == b[k] or (np.isnan(a[k]) and np.isnan(b[k])), k


@pytest.mark.parametrize("ap", ["voc", "standard"])
def test_sbir_per_query_values_give_the_numbers_back(ap):
    q, ql, g, gl = _sbir_data()
    kw = dict(map_at=("all", 50), p_at=(10, 100), ap=ap, chunk_size=16)
    plain = sbir_metrics(q, ql, g, gl, **kw)
    numbers, pq = sbir_metrics(q, ql, g, gl, per_query=True, **kw)
    _same(plain, numbers)
    _same(pq.numbers(ql), numbers)
    left_out = ql == 6
    assert left_out.any() and (pq.n_relevant[left_out] == 0).all()
    for v in pq.values.values():
        assert np.isnan(v[left_out]).all() and not np.isnan(v[~left_out]).any()
    dist = ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)
    numbers, pq = sbir_metrics_from_distances(dist, ql, gl, per_query=True, **kw)
    _same(pq.numbers(ql), numbers)


def test_hashing_per_query_values_give_the_numbers_back():
    rng = np.random.default_rng(3)
    ql = (rng.random((70, 5)) < 0.3).astype(np.float32)
    gl = (rng.random((120, 5)) < 0.3).astype(np.float32)
    q, g = rng.integers(0, 4, (70, 12)).astype(np.uint8), rng.integers(0, 4, (120, 12)).astype(np.uint8)
    plain = hashing_metrics(q, ql, g, gl, map_at=(50, "all"), p_at=(20,))
    numbers, pq = hashing_metrics(q, ql, g, gl, map_at=(50, "all"), p_at=(20,), per_query=True)
    _same(plain, numbers)
    _same(pq.numbers(ql), numbers)
    assert plain["num_queries_no_relevant"] > 0  # rows without labels: kept, scoring 0
    assert (pq.values["map_50"][pq.n_relevant == 0] == 0).all()


def test_prototype_metrics_pass_per_query_through():
    q, ql, g, gl = _sbir_data(seed=1, nq=60, ng=256)
    kw = dict(m=2, k=4, map_at=("all",), p_at=(10,))
    plain = prototype_retrieval_metrics(q, ql, g, gl, **kw)
    numbers, per = prototype_retrieval_metrics(q, ql, g, gl, per_query=True, **kw)
    assert set(per) == set(plain) == {"raw", "proto", "fused"}
    for variant in plain:
        _same(plain[variant], numbers[variant])
        _same(per[variant].numbers(ql), numbers[variant])


def test_reductions_by_hand():
    v = np.array([1.0, 0.5, np.nan, 0.25, 0.75, 0.0])
    lab = np.array([0, 0, 1, 2, 2, 2])  # class 1: left out whole
    n_rel = np.array([3, 3, 0, 2, 2, 2])
    assert aggregate.reduce("class_mean", v, lab, n_rel) == (0.75 + (1.0 / 3.0)) / 2
    assert aggregate.reduce("mean", v, lab, n_rel) == 2.5 / 5
    assert aggregate.reduce("count", None, lab, n_rel) == 6.0
    assert aggregate.reduce("no_relevant", None, lab, n_rel) == 1.0
    assert np.isnan(aggregate.reduce("mean", np.full(3, np.nan), lab[:3], n_rel[:3]))
    with pytest.raises(ValueError, match="unknown reduction"):
        aggregate.reduce("median", v, lab, n_rel)


def test_load_refuses_other_files(tmp_path):
    other = tmp_path / "features.npz"
    np.savez(other, features=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="not a sketchquant-queries/1 file"):
        per_query.load(other)
    with pytest.raises(FileNotFoundError):
        per_query.load(tmp_path / "missing.npz")


# ----------------------------------------------------------------------------------------------------
# two processes: every rank has every query's values; rank 0's file is the one-process file


@pytest.mark.slow
def test_two_process_evaluate_writes_the_one_process_file(zs_run):
    """ddp_spawn: the evaluator runs in the workers, rank 0 writes the file, the main process names it."""
    one = zs_run / "results.json"  # the run's own test: one process, the same (best) checkpoint
    ckpt = json.loads(one.read_text())["checkpoint"]
    time.sleep(1.05)  # evaluation files are named by the second
    before = set(zs_run.glob("eval-*.json"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKETCHQUANT_RUN_", "SLURM_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), SKETCHQUANT_DEBUG="1")
    subprocess.run(
        [sys.executable, "-m", "sketchquant.app.cli", "evaluate", "--ckpt", ckpt]
        + ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp_spawn"],
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    (two,) = set(zs_run.glob("eval-*.json")) - before
    a, b = (_check_file(f, MODULE_LOSSES["zs_sbir"]) for f in (one, two))
    for key in ("query_index", "query_path", "query_label", "n_relevant", "logged", "logged_reduction"):
        assert np.array_equal(a[key], b[key]), key
    assert np.array_equal(a["values"][0], b["values"][0])  # raw: the same bits in any number of processes
    np.testing.assert_allclose(a["values"], b["values"], atol=1e-6)  # PQ k-means may round differently
