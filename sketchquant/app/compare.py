"""``sketchquant compare A B`` (or ``compare A1 A2 A3 -- B1 B2 B3`` for seeds): is B better than A?

A RUN is a run folder (its ``results.json`` names the per-query file), a results / ``eval-<time>.json``
file, or a per-query file itself (docs/comparing.md). Every run must be scored on the same test queries
(same sample ids, labels and files, relative to the data folder); otherwise the command refuses and says
what differs. The statistics (paired bootstrap interval, sign-flip p-value) are
:mod:`sketchquant.core.retrieval.compare`; this module reads the files and prints a table or JSON.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sketchquant.core.retrieval import per_query
from sketchquant.core.retrieval.aggregate import MEAN, reduce
from sketchquant.core.retrieval.compare import Comparison, compare_paired, p_text

__all__ = ["compare_command", "compare_per_class", "compare_runs", "queries_file", "check_same_queries"]


def queries_file(run: str | os.PathLike) -> Path:
    """The per-query file of a RUN: a run folder (its ``results.json``), a results JSON, or the file."""
    path = Path(run)
    results = path / "results.json" if path.is_dir() else path
    if results.suffix != ".json":
        if not path.is_file():
            raise FileNotFoundError(f"{run}: no such run folder or per-query file")
        return path
    if not results.is_file():
        raise FileNotFoundError(f"{run}: no {results.name} (not a run folder, or never tested)")
    try:
        name = json.loads(results.read_text()).get("queries")
    except (json.JSONDecodeError, AttributeError) as err:
        raise ValueError(f"{results}: not a results file ({err})") from None
    if not name:
        raise ValueError(
            f"{results} names no per-query file (a run tested before per-query files existed, or "
            "test_after_fit=false): `sketchquant evaluate --ckpt ...` writes one (eval-<time>.queries.npz)"
        )
    return results.parent / name


def _relative(paths: np.ndarray) -> list[str]:
    """Query paths relative to their common folder (a data set moved to another root is the same)."""
    items = [str(p) for p in paths.tolist()]
    if not any(items):
        return items
    root = os.path.commonpath(items) if len(items) > 1 else os.path.dirname(items[0])
    return [os.path.relpath(p, root) for p in items]


def check_same_queries(name_a: str, a: dict, name_b: str, b: dict) -> None:
    """A ``ValueError`` saying why ``a`` and ``b`` are not scored on the same test queries."""
    why = "compare pairs the runs query by query, so they must be tested on the same test set"
    if str(a["protocol"]) != str(b["protocol"]):
        raise ValueError(f"{name_a} uses the {a['protocol']} protocol, {name_b} the {b['protocol']} protocol")
    qa, qb = a["query_index"], b["query_index"]
    if qa.shape != qb.shape:
        raise ValueError(
            f"runs on different test queries: {name_a} has {qa.size} queries, {name_b} {qb.size}; {why}"
        )
    for what, x, y in (
        ("sample", qa, qb),
        ("label", a["query_label"], b["query_label"]),
        ("file", np.asarray(_relative(a["query_path"])), np.asarray(_relative(b["query_path"]))),
    ):
        differ = np.flatnonzero((x != y).reshape(len(qa), -1).any(1)) if x.shape == y.shape else [0]
        if len(differ):
            i = int(differ[0])
            raise ValueError(
                f"runs on different test queries: query {i} is {what} {x[i].tolist()} in {name_a} but "
                f"{y[i].tolist()} in {name_b} ({len(differ)} of {qa.size} queries differ); {why}"
            )


def _value(record: dict, name: str) -> float:
    """The logged mean ``name``, recomputed exactly from the per-query values."""
    values, kind = per_query.series(record, name)
    return reduce(kind, values, record["query_label"], record["n_relevant"])


def _records(a_runs: Sequence[str | os.PathLike], b_runs: Sequence[str | os.PathLike]) -> list[dict]:
    """The per-query records of A's runs then B's, checked to be on the same test queries."""
    if not a_runs or len(a_runs) != len(b_runs):
        raise ValueError(
            f"need as many runs on each side, paired A_i with B_i (got {len(a_runs)} and {len(b_runs)})"
        )
    names = [str(r) for r in (*a_runs, *b_runs)]
    records = [per_query.load(queries_file(r)) for r in names]
    for name, rec in zip(names[1:], records[1:]):
        check_same_queries(names[0], records[0], name, rec)
    return records


def _shared(records: list[dict], metric: str | None) -> list[str]:
    """The metrics every record can compare; ``metric`` must be one of them when given."""
    shared = [m for m in per_query.compared_names(records[0]) if all(m in r["logged"] for r in records[1:])]
    if metric is not None and metric not in shared:
        raise ValueError(f"no metric {metric!r} in every run; shared: {', '.join(shared) or 'none'}")
    return shared


def compare_per_class(
    a_runs: Sequence[str | os.PathLike],
    b_runs: Sequence[str | os.PathLike],
    metric: str,
    resamples: int = 10000,
    seed: int = 0,
) -> list[tuple[str, Comparison]]:
    """``metric`` of B against A within each query class: ``(class name, Comparison)`` per class in the
    file's class order, each over that class's queries only (its per-run value is the mean of its
    queries' values: for a class-mean metric, exactly the class's term in the logged mean)."""
    records = _records(a_runs, b_runs)
    _shared(records, metric)
    labels = records[0]["query_label"]
    if labels.ndim != 1:
        raise ValueError(
            f"{metric}: --per-class needs one class per query; these queries are multi-label "
            f"({labels.shape[1]} labels each)"
        )
    values = [per_query.series(r, metric)[0] for r in records]
    n = len(a_runs)
    out = []
    for c, name in enumerate(records[0]["class_names"].tolist()):
        mask = labels == c
        if not mask.any() or np.isnan(values[0][mask]).all():
            continue  # no query of this class (a seen class), or none with a relevant gallery item
        part = [v[mask] for v in values]
        means = [float(np.nanmean(v)) for v in part]
        out.append(
            (
                str(name),
                compare_paired(
                    f"{metric} [{name}]",
                    part[:n],
                    part[n:],
                    np.zeros(int(mask.sum()), dtype=np.int64),
                    MEAN,
                    means[:n],
                    means[n:],
                    resamples=resamples,
                    seed=seed,
                ),
            )
        )
    return out


def compare_runs(
    a_runs: Sequence[str | os.PathLike],
    b_runs: Sequence[str | os.PathLike],
    metric: str | None = None,
    resamples: int = 10000,
    seed: int = 0,
) -> list[Comparison]:
    """B against A (pairs ``a_runs[i]``, ``b_runs[i]``): one :class:`Comparison` for ``metric`` (a logged
    name), or one per metric every run shares."""
    records = _records(a_runs, b_runs)
    shared = _shared(records, metric)
    n = len(a_runs)
    out = []
    for m in [metric] if metric is not None else shared:
        series = [per_query.series(r, m) for r in records]
        kinds = {kind for _, kind in series}
        if len(kinds) > 1:
            raise ValueError(f"{m}: the runs aggregate it differently ({', '.join(sorted(kinds))})")
        values = [_value(r, m) for r in records]
        out.append(
            compare_paired(
                m,
                [v for v, _ in series[:n]],
                [v for v, _ in series[n:]],
                records[0]["query_label"],
                kinds.pop(),
                values[:n],
                values[n:],
                resamples=resamples,
                seed=seed,
            )
        )
    return out


def _side(mean: float, std: float | None, runs: int) -> str:
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f} ({runs})"


def _table(
    rows: list[Comparison],
    a_runs: Sequence[str],
    b_runs: Sequence[str],
    classes: Sequence[tuple[str, Comparison]] = (),
) -> str:
    first = rows[0]
    head = [
        f"A: {', '.join(map(str, a_runs))}",
        f"B: {', '.join(map(str, b_runs))}",
        f"{first.n_queries} queries, {first.resamples} resamples, seed {first.seed}; diff = B − A, "
        f"{first.level:.0%} paired bootstrap interval, two-sided sign-flip p-value",
        "",
    ]
    if classes:
        head[-1:] = [
            f"then each class over its own queries: {len(classes)} more tests, of which about 1 in "
            f"{round(1 / (1 - first.level))} misses by chance",
            "",
        ]
    cells = [("metric", "A", "B", "diff", f"{first.level:.0%} interval", "p")]
    for label, c in [(c.metric, c) for c in rows] + [(f"  {name} ({c.n_queries})", c) for name, c in classes]:
        cells.append(
            (
                label,
                _side(c.a_mean, c.a_std, len(c.a)),
                _side(c.b_mean, c.b_std, len(c.b)),
                f"{c.diff:+.4f}",
                f"[{c.ci_low:+.4f}, {c.ci_high:+.4f}]",
                p_text(c.p_value, c.resamples),
            )
        )
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = [
        "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
        for row in cells
    ]
    return "\n".join(head + lines[:1] + ["  ".join("-" * w for w in widths)] + lines[1:])


def _finite(obj: Any) -> Any:
    """NaN / inf → None: the printed JSON stays strict."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def compare_command(
    runs: list[str],
    versus: list[str] | None = None,
    metric: str | None = None,
    resamples: int = 10000,
    seed: int = 0,
    as_json: bool = False,
    per_class: bool = False,
) -> None:
    """``sketchquant compare A B`` / ``compare A1 A2 -- B1 B2`` (``versus``: the runs after ``--``);
    ``per_class``: the metric within each query class too (needs ``metric``)."""
    if versus is None and len(runs) != 2:
        raise ValueError(
            f"give two runs (compare A B), or seeds as `compare A1 A2 A3 -- B1 B2 B3`; got {len(runs)} run(s)"
        )
    if per_class and metric is None:
        raise ValueError("--per-class needs --metric NAME (one metric, e.g. test/fused/map_all)")
    a_runs, b_runs = (runs[:1], runs[1:]) if versus is None else (runs, versus)
    rows = compare_runs(a_runs, b_runs, metric=metric, resamples=resamples, seed=seed)
    classes = compare_per_class(a_runs, b_runs, metric, resamples, seed) if per_class else []
    if as_json:
        sides = {"runs_a": list(a_runs), "runs_b": list(b_runs)}
        if metric is not None:
            payload = {**rows[0].as_dict(), **sides}
            if per_class:
                payload["per_class"] = [{"class": name, **c.as_dict()} for name, c in classes]
        else:
            payload = {**sides, "comparisons": [c.as_dict() for c in rows]}
        print(json.dumps(_finite(payload), indent=2))
    elif not rows:
        print("no metric shared by every run")
    else:
        print(_table(rows, a_runs, b_runs, classes))
