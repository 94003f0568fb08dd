"""The per-query file (``queries.npz``): every test query's value of every reported metric, from which
every reported number recomputes exactly (docs/comparing.md).

A test writes one beside its ``results.json`` (``eval-<time>.queries.npz`` beside ``eval-<time>.json``),
named in that JSON under ``"queries"``. It is a plain ``.npz`` (no pickles), ``Q`` queries in sample-index
order, ``F`` feature sets, ``M`` per-query metrics, ``L`` logged numbers:

- ``format`` the string :data:`FORMAT`; ``protocol`` (``sbir`` | ``hashing``); ``stage`` (``test``);
- ``feature_sets`` ``(F,)`` and their logged-name ``prefixes`` ``(F,)`` (``test/``, ``test/proto/`` …);
- ``metrics`` ``(M,)`` (``map_all``, ``p_100`` …) and ``values`` float64 ``(F, M, Q)``: each query's value,
  NaN for a query the protocol leaves out (SBIR: no relevant gallery item);
- ``n_relevant`` int64 ``(Q,)``: each query's relevant gallery items;
- ``query_index`` int64 ``(Q,)`` (the DataModule's sample index), ``query_path`` ``(Q,)``,
  ``query_label`` ``(Q,)`` class ids or ``(Q, C)`` multi-hot (uint8), ``class_names`` ``(C,)``;
- ``gallery_label`` ``(N,)`` or ``(N, C)`` and ``map_at``: what the chance levels are computed from;
- ``logged`` ``(L,)`` every logged name the file recomputes, with ``logged_feature`` / ``logged_metric``
  (indices into ``feature_sets`` / ``metrics``, −1 for none), ``logged_reduction`` (one of
  :data:`~.aggregate.REDUCTIONS` or :data:`CHANCE`) and ``logged_value`` (float64, as the evaluator
  computed it; ``results.json`` holds it rounded to float32 by the logger).

:func:`recompute` gives every logged number from these fields alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sketchquant.core.io import atomic_savez

from .aggregate import CLASS_MEAN, MEAN, PerQuery, reduce
from .protocols import get_protocol

__all__ = ["FORMAT", "CHANCE", "build", "save", "load", "recompute", "series", "compared_names"]

FORMAT = "sketchquant-queries/1"
#: the reduction of a chance level: the protocol's chance function of the query and gallery labels
CHANCE = "chance"
FIELDS = (
    "format",
    "protocol",
    "stage",
    "feature_sets",
    "prefixes",
    "metrics",
    "values",
    "n_relevant",
    "query_index",
    "query_path",
    "query_label",
    "class_names",
    "gallery_label",
    "map_at",
    "logged",
    "logged_feature",
    "logged_metric",
    "logged_reduction",
    "logged_value",
)


def _labels(labels: Any) -> np.ndarray:
    """Class ids as int64; multi-hot 0/1 labels as uint8 (lossless, a quarter of float32)."""
    a = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if a.ndim == 2 and np.isin(a, (0, 1)).all():
        return a.astype(np.uint8)
    return a.astype(np.int64) if a.ndim == 1 else a


def build(
    *,
    protocol: str,
    stage: str,
    features: Mapping[str, tuple[str, PerQuery]],
    chance: Mapping[str, float],
    logged: Mapping[str, float],
    query_index: Any,
    query_label: Any,
    gallery_label: Any,
    query_path: Sequence[str],
    class_names: Sequence[str],
    map_at: Sequence[Any],
) -> dict[str, np.ndarray]:
    """The file's arrays. ``features``: feature set → ``(logged-name prefix, its PerQuery)``;
    ``chance``: the logged chance levels; ``logged``: every logged number (float64), by name."""
    names = list(features)
    first = features[names[0]][1]
    metrics = list(first.values)
    for name, (_, pq) in features.items():
        if list(pq.values) != metrics or not np.array_equal(pq.n_relevant, first.n_relevant):
            raise ValueError(f"feature set {name!r}: other metrics or relevant counts than {names[0]!r}")
    rows: list[tuple[str, int, int, str]] = []
    for f, (prefix, pq) in enumerate(features.values()):
        for suffix, (metric, kind) in pq.reported.items():
            rows.append((prefix + suffix, f, metrics.index(metric) if metric else -1, kind))
    rows += [(name, -1, -1, CHANCE) for name in chance]
    return {
        "format": np.asarray(FORMAT),
        "protocol": np.asarray(protocol),
        "stage": np.asarray(stage),
        "feature_sets": np.asarray(names, dtype=str),
        "prefixes": np.asarray([features[n][0] for n in names], dtype=str),
        "metrics": np.asarray(metrics, dtype=str),
        "values": np.stack([np.stack([pq.values[m] for m in metrics]) for _, pq in features.values()]),
        "n_relevant": np.asarray(first.n_relevant, dtype=np.int64),
        "query_index": np.asarray(query_index, dtype=np.int64).reshape(-1),
        "query_path": np.asarray(list(query_path), dtype=str),
        "query_label": _labels(query_label),
        "class_names": np.asarray(list(class_names), dtype=str),
        "gallery_label": _labels(gallery_label),
        "map_at": np.asarray([str(k) for k in map_at], dtype=str),
        "logged": np.asarray([r[0] for r in rows], dtype=str),
        "logged_feature": np.asarray([r[1] for r in rows], dtype=np.int64),
        "logged_metric": np.asarray([r[2] for r in rows], dtype=np.int64),
        "logged_reduction": np.asarray([r[3] for r in rows], dtype=str),
        "logged_value": np.asarray([float(logged[r[0]]) for r in rows], dtype=np.float64),
    }


def save(path: str | os.PathLike, record: Mapping[str, np.ndarray]) -> Path:
    """Write the file atomically (a reader never sees half of one)."""
    return atomic_savez(path, dict(record))


def load(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The file's arrays; a ``ValueError`` naming the file when it is not a per-query file."""
    try:
        with np.load(path, allow_pickle=False) as z:
            record = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such per-query file") from None
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a per-query .npz file ({err})") from None
    missing = [k for k in FIELDS if k not in record]
    if missing or str(record["format"]) != FORMAT:
        got = str(record.get("format", "no format field"))
        raise ValueError(f"{path}: not a {FORMAT} file ({got}; missing: {', '.join(missing) or 'none'})")
    return record


def _row(record: Mapping[str, np.ndarray], name: str) -> int:
    hits = np.flatnonzero(record["logged"] == name)
    if not hits.size:
        raise ValueError(
            f"no logged metric {name!r} in the per-query file; it has: {', '.join(record['logged'])}"
        )
    return int(hits[0])


def series(record: Mapping[str, np.ndarray], name: str) -> tuple[np.ndarray, str]:
    """``(per-query float64 values, reduction)`` behind the logged mean ``name`` (class or plain mean)."""
    i = _row(record, name)
    f, m, kind = (
        int(record["logged_feature"][i]),
        int(record["logged_metric"][i]),
        str(record["logged_reduction"][i]),
    )
    if m < 0 or kind not in (CLASS_MEAN, MEAN):
        raise ValueError(f"{name!r} is a {kind}, not a mean of per-query values")
    return record["values"][f, m], kind


def compared_names(record: Mapping[str, np.ndarray]) -> list[str]:
    """The logged names that are means of per-query values (what ``compare`` can test), in file order."""
    kinds = record["logged_reduction"]
    return [
        str(n)
        for n, k, m in zip(record["logged"], kinds, record["logged_metric"])
        if m >= 0 and k in (CLASS_MEAN, MEAN)
    ]


def recompute(record: Mapping[str, np.ndarray] | str | os.PathLike) -> dict[str, float]:
    """Every logged number from the per-query file (or its path), exactly as the evaluator computed it:
    class means, plain means and counts by :func:`~.aggregate.reduce`, chance levels by the protocol's
    chance function of the stored labels."""
    rec = load(record) if isinstance(record, (str, os.PathLike)) else record
    labels = rec["query_label"]
    chance = {}
    if CHANCE in set(rec["logged_reduction"].tolist()):
        q = torch.from_numpy(labels.astype(np.float32) if labels.ndim == 2 else labels)
        g_lab = rec["gallery_label"]
        g = torch.from_numpy(g_lab.astype(np.float32) if g_lab.ndim == 2 else g_lab)
        at = [int(k) if k.isdigit() else str(k) for k in rec["map_at"].tolist()]
        chance = get_protocol(str(rec["protocol"])).chance(q, g, at, str(rec["stage"]))
    out: dict[str, float] = {}
    for i, name in enumerate(rec["logged"].tolist()):
        kind = str(rec["logged_reduction"][i])
        if kind == CHANCE:
            out[name] = float(chance[name])
            continue
        f, m = int(rec["logged_feature"][i]), int(rec["logged_metric"][i])
        out[name] = reduce(kind, rec["values"][f, m] if m >= 0 else None, labels, rec["n_relevant"])
    return out
