"""``sketchquant compare`` and its statistics (docs/comparing.md): known answers on synthetic per-query
values; a run against itself (diff 0, an interval holding 0, p = 1); a planted difference (rankings made
worse on half the queries) is detected; runs on different queries are refused, saying why."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from test_per_query import quant_run, zs_run  # noqa: F401  (the session's tiny runs, shared)

from sketchquant.app import cli
from sketchquant.app.compare import compare_runs, queries_file
from sketchquant.app.methods import METHODS
from sketchquant.app.train import evaluate
from sketchquant.callbacks.config import EvalConfig
from sketchquant.callbacks.retrieval_evaluator import RetrievalEvaluator
from sketchquant.core.batch import DOMAIN, INDEX, LABEL, PHOTO, SKETCH
from sketchquant.core.retrieval import per_query
from sketchquant.core.retrieval.compare import compare_paired, p_text

R = 10000


# ----------------------------------------------------------------------------------------------------
# the statistics, on synthetic per-query values


def _values(n=600, n_cls=30, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random(n), rng.integers(0, n_cls, n)


@pytest.mark.parametrize("reduction", ["class_mean", "mean"])
def test_constant_shift_is_the_diff_with_a_tight_interval(reduction):
    a, lab = _values()
    c = compare_paired("m", [a], [a + 0.05], lab, reduction, [0.5], [0.55], resamples=R)
    assert c.diff == pytest.approx(0.05, abs=1e-12)
    assert c.ci_low == pytest.approx(0.05, abs=1e-12) and c.ci_high == pytest.approx(0.05, abs=1e-12)
    assert c.p_value == 1 / (R + 1)  # no sign flip is as extreme as all +: p at its floor


@pytest.mark.parametrize("reduction", ["class_mean", "mean"])
def test_identical_runs_give_zero_and_p_one(reduction):
    a, lab = _values()
    c = compare_paired("m", [a], [a.copy()], lab, reduction, [0.5], [0.5], resamples=R)
    assert (c.diff, c.ci_low, c.ci_high, c.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_class_means_are_resampled_within_classes():
    """A difference constant within each class: every within-class resample has the same class means."""
    _, lab = _values()
    shift = np.linspace(-0.1, 0.2, 30)[lab]
    a = np.zeros(lab.size)
    cm = compare_paired("m", [a], [a + shift], lab, "class_mean", [0.0], [0.05], resamples=2000)
    assert cm.ci_high - cm.ci_low < 1e-12 and cm.ci_low == pytest.approx(np.mean(np.linspace(-0.1, 0.2, 30)))
    plain = compare_paired("m", [a], [a + shift], lab, "mean", [0.0], [0.05], resamples=2000)
    assert plain.ci_high - plain.ci_low > 0.01  # over all queries, the class mix varies
    assert cm.n_classes == 30 and plain.n_classes == 1


def test_sign_flip_p_value_of_three_equal_differences():
    """d = (1, 1, 1): |Σ ±1| ≥ 3 only for all + or all −, so the exact p is 2/8."""
    c = compare_paired("m", [np.zeros(3)], [np.ones(3)], np.zeros(3), "mean", [0.0], [1.0], resamples=40000)
    assert c.p_value == pytest.approx(0.25, abs=0.01)


def test_p_at_the_floor_prints_as_a_bound():
    """A planted difference no flip reaches: p = 1/(R + 1), printed '< 1/R' (the true p is below it)."""
    d = np.linspace(0.5, 1.5, 40)
    c = compare_paired("m", [np.zeros(40)], [d], np.zeros(40), "mean", [0.0], [1.0], resamples=2000)
    assert c.p_value == 1 / 2001
    assert p_text(c.p_value, c.resamples) == "< 0.0005"
    assert p_text(1 / 10001, 10000) == "< 0.0001"
    assert p_text(2 / 10001, 10000) == "0.0002" and p_text(0.25, 40000) == "0.2500"


def test_seeds_pair_runs_and_pool_the_per_query_differences():
    a0, lab = _values()
    rng = np.random.default_rng(1)
    a = [a0 + rng.normal(0, 0.01, a0.size) for _ in range(3)]
    b = [x + s for x, s in zip(a, (0.01, 0.02, 0.03))]
    am, bm = [float(x.mean()) for x in a], [float(x.mean()) for x in b]
    c = compare_paired("m", a, b, lab, "mean", am, bm, resamples=R)
    assert c.diff == pytest.approx(0.02, abs=1e-12) and c.ci_low == pytest.approx(0.02, abs=1e-12)
    assert c.a_std == pytest.approx(np.std(am, ddof=1)) and c.b_std == pytest.approx(np.std(bm, ddof=1))
    assert c.a == am and c.p_value == 1 / (R + 1)


def test_same_seed_same_numbers_and_refusals():
    a, lab = _values()
    b = a + np.random.default_rng(2).normal(0, 0.1, a.size)
    one = compare_paired("m", [a], [b], lab, "class_mean", [0.0], [0.0], resamples=2000, seed=7)
    assert one == compare_paired("m", [a], [b], lab, "class_mean", [0.0], [0.0], resamples=2000, seed=7)
    assert one.ci_low < 0 < one.ci_high and one.p_value > 0.05  # noise only
    with pytest.raises(ValueError, match="same number of runs"):
        compare_paired("m", [a, a], [b], lab, "mean", [0.0, 0.0], [0.0])
    gap = b.copy()
    gap[3] = np.nan
    with pytest.raises(ValueError, match="leave out different queries"):
        compare_paired("m", [a], [gap], lab, "mean", [0.0], [0.0])


def test_600_queries_take_well_under_a_second():
    a, lab = _values()
    b = a + np.random.default_rng(3).normal(0, 0.1, a.size)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        compare_paired("m", [a], [b], lab, "class_mean", [0.0], [0.0], resamples=R)
        best = min(best, time.perf_counter() - start)
    assert best < 1.0, best


# ----------------------------------------------------------------------------------------------------
# planted difference, through the evaluator's per-query file (no training)


def _evaluated(tmp_path, name: str, worse_half: bool):
    """The evaluator's per-query file of clustered features (160 queries, 8 classes); ``worse_half``:
    every second query's feature negated, which reverses its ranking (normalised L2)."""
    rng = np.random.default_rng(0)
    nq, ng, n_cls = 160, 240, 8
    ql, gl = np.repeat(np.arange(n_cls), nq // n_cls), np.repeat(np.arange(n_cls), ng // n_cls)
    centres = rng.normal(size=(n_cls, 16))
    q = centres[ql] + 0.9 * rng.normal(size=(nq, 16))
    if worse_half:
        q[::2] *= -1
    feats = torch.from_numpy(np.concatenate([q, centres[gl] + 0.9 * rng.normal(size=(ng, 16))])).float()
    data = {
        "emb/raw": feats,
        LABEL: torch.from_numpy(np.concatenate([ql, gl])),
        DOMAIN: torch.cat([torch.full((nq,), SKETCH), torch.full((ng,), PHOTO)]),
        INDEX: torch.arange(nq + ng),
    }
    config = EvalConfig(map_at=["all"], p_at=[10], grid=False, prototypes=False)
    ev = RetrievalEvaluator(config, METHODS["zs_sbir"].features)
    metrics = ev.compute(data, "test")
    path = tmp_path / f"{name}.npz"
    per_query.save(path, ev.queries_record(data, metrics))
    assert per_query.recompute(path)["test/map_all"] == metrics["test/map_all"]
    return path


def test_planted_difference_is_detected(tmp_path):
    good, bad = _evaluated(tmp_path, "good", False), _evaluated(tmp_path, "bad", True)
    for c in compare_runs([good], [bad], resamples=R):
        assert c.diff < 0 and c.ci_high < 0 and c.p_value < 0.001, c
    (back,) = compare_runs([bad], [good], metric="test/map_all", resamples=R)
    assert back.diff > 0 and back.ci_low > 0


# ----------------------------------------------------------------------------------------------------
# the command, on the tiny trained run


def _json(capsys, *args: str) -> dict:
    assert cli.main(["compare", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_run_against_itself(zs_run, capsys):  # noqa: F811
    got = _json(capsys, str(zs_run), str(zs_run / "queries.npz"), "--metric", "test/fused/map_all")
    assert {"diff", "ci_low", "ci_high", "p_value", "metric"} <= set(got)
    assert got["metric"] == "test/fused/map_all" and got["diff"] == 0.0 and got["p_value"] == 1.0
    assert got["ci_low"] <= 0.0 <= got["ci_high"]
    results = json.loads((zs_run / "results.json").read_text())["metrics"]
    assert float(np.float32(got["a_mean"])) == results["test/fused/map_all"]
    seeds = _json(
        capsys, str(zs_run), str(zs_run), "--", str(zs_run), str(zs_run), "--metric", "test/map_all"
    )
    assert seeds["diff"] == 0.0 and seeds["a_std"] == 0.0 and len(seeds["runs_b"]) == 2
    assert cli.main(["compare", str(zs_run), str(zs_run), "--resamples", "200"]) == 0
    table = capsys.readouterr().out
    for name in ("test/map_all", "test/proto/map_all", "test/fused/p_100_micro"):
        assert f"\n{name} " in table


def test_planted_worse_rankings_in_a_real_run(zs_run, monkeypatch):  # noqa: F811
    """evaluate the run's checkpoint with every second query's embedding replaced by minus the mean of its
    class's photos: the photos of its own class, closest to that mean, go to the end of its ranking."""
    gathered = RetrievalEvaluator.gathered

    def worse(self):
        data = gathered(self)
        emb, labels, domain = data["emb/raw"].clone(), data[LABEL], data[DOMAIN]
        for i in torch.nonzero((domain == SKETCH) & (data[INDEX] % 2 == 0)).flatten().tolist():
            emb[i] = -emb[(domain == PHOTO) & (labels == labels[i])].mean(0)
        return {**data, "emb/raw": emb}

    monkeypatch.setattr(RetrievalEvaluator, "gathered", worse)
    monkeypatch.delenv("SKETCHQUANT_RUN_DIR", raising=False)
    time.sleep(1.05)  # evaluation files are named by the second
    before = set(zs_run.glob("eval-*.json"))
    evaluate(json.loads((zs_run / "results.json").read_text())["checkpoint"], ["eval.prototypes=false"])
    (planted,) = set(zs_run.glob("eval-*.json")) - before
    a, b = (per_query.load(queries_file(r))["values"][0, 0] for r in (zs_run, planted))
    # worse on half the queries, only there (the tiny model maps one class to tied features: nothing
    # to make worse in that class)
    assert (b[1::2] == a[1::2]).all() and (b[::2] <= a[::2]).all() and (b[::2] < a[::2]).sum() >= 5
    (c,) = compare_runs([zs_run], [planted], metric="test/map_all", resamples=R)
    assert c.diff < 0 and c.ci_high < 0 and c.p_value < 0.05, c


def test_runs_on_other_queries_are_refused(zs_run, tmp_path, capsys):  # noqa: F811
    record = per_query.load(queries_file(zs_run))
    fewer = {k: v for k, v in record.items()}
    fewer.update(values=record["values"][..., 1:], n_relevant=record["n_relevant"][1:])
    fewer.update({k: record[k][1:] for k in ("query_index", "query_path", "query_label")})
    per_query.save(tmp_path / "fewer.npz", fewer)
    relabelled = dict(record, query_label=np.roll(record["query_label"], 7))
    per_query.save(tmp_path / "relabelled.npz", relabelled)
    for other, why in (("fewer.npz", "21 queries"), ("relabelled.npz", "is label")):
        assert cli.main(["compare", str(zs_run), str(tmp_path / other), "--resamples", "100"]) == 2
        err = capsys.readouterr().err
        assert "runs on different test queries" in err and why in err, err
    assert cli.main(["compare", str(zs_run), str(zs_run), str(zs_run)]) == 2
    assert "A1 A2 A3 -- B1 B2 B3" in capsys.readouterr().err
    assert cli.main(["compare", str(zs_run), str(zs_run), "--metric", "test/nope"]) == 2
    assert "no metric 'test/nope'" in capsys.readouterr().err


def test_per_class_finds_the_class_that_moved(zs_run, tmp_path, capsys):  # noqa: F811
    """Every query of one class loses half its value: that class's diff is −½ its mean, with an interval
    below 0; every other class's is exactly 0 (p 1); and, for a class mean, the per-class diffs average
    to the overall one."""
    record = per_query.load(queries_file(zs_run))
    labels = record["query_label"]
    values = record["values"].copy()
    moved = int(np.bincount(labels).argmax())
    values[..., labels == moved] *= 0.5
    per_query.save(tmp_path / "halved.npz", dict(record, values=values))
    got = _json(capsys, str(zs_run), str(tmp_path / "halved.npz"), "--metric", "test/map_all", "--per-class")
    rows = {row["class"]: row for row in got["per_class"]}
    names = record["class_names"].tolist()
    assert set(rows) == {names[c] for c in np.unique(labels)}
    a = per_query.series(record, "test/map_all")[0]
    assert rows[names[moved]]["diff"] == pytest.approx(-0.5 * np.nanmean(a[labels == moved]))
    assert rows[names[moved]]["ci_high"] < 0 and rows[names[moved]]["n_queries"] == (labels == moved).sum()
    for name, row in rows.items():
        if name != names[moved]:
            assert row["diff"] == 0.0 and row["p_value"] == 1.0 and row["ci_low"] == row["ci_high"] == 0.0
    assert got["diff"] == pytest.approx(np.mean([row["diff"] for row in rows.values()]), abs=1e-12)
    assert (
        cli.main(
            ["compare", str(zs_run), str(tmp_path / "halved.npz"), "--metric", "test/map_all"]
            + ["--per-class", "--resamples", "200"]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert f"\n  {names[moved]} ({(labels == moved).sum()}) " in table and "more tests" in table


def test_per_class_needs_one_metric_and_one_label(zs_run, quant_run, capsys):  # noqa: F811
    assert cli.main(["compare", str(zs_run), str(zs_run), "--per-class"]) == 2
    assert "--per-class needs --metric NAME" in capsys.readouterr().err
    labels = per_query.load(queries_file(quant_run))["query_label"]
    metric = "test/codes/map_1000" if labels.ndim == 2 else pytest.skip("method A's queries are single-label")
    assert cli.main(["compare", str(quant_run), str(quant_run), "--metric", metric, "--per-class"]) == 2
    assert "--per-class needs one class per query; these queries are multi-label" in capsys.readouterr().err
