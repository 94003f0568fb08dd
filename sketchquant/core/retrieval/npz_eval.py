"""``sketchquant eval-features QUERY.npz GALLERY.npz`` — evaluate saved features with the exact protocols.

Each npz holds ``features`` (``N × d``, float or integer codes) and ``labels`` (``N`` class ids, or
``N × C`` 0/1 multi-hot for the hashing protocol).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import numpy as np
from rich.console import Console

from sketchquant.core.report import print_table

from .protocols import get_protocol

__all__ = ["eval_features", "load_npz_features"]


def load_npz_features(path: str | os.PathLike, multilabel_ok: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(features, labels)`` from an npz file; errors name the file and the field."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):  # a plain .npy array
                raise ValueError("it holds one array, not the fields 'features' and 'labels'")
            arrays = {field: data[field] for field in ("features", "labels") if field in data.files}
            keys = set(data.files)
    except Exception as exc:  # not a zip, a pickle, truncated: name the file and say what was expected
        raise ValueError(f"{path}: not a readable .npz file of features and labels ({exc})") from exc
    for field in ("features", "labels"):
        if field not in arrays:
            raise ValueError(f"{path}: missing field {field!r} (fields present: {sorted(keys) or 'none'})")
    feats, labels = arrays["features"], arrays["labels"]
    if feats.ndim != 2:
        raise ValueError(f"{path}: field 'features' must be N × d, got shape {feats.shape}")
    if feats.shape[0] == 0:
        raise ValueError(f"{path}: field 'features' is empty (0 rows)")
    if not (np.issubdtype(feats.dtype, np.floating) or np.issubdtype(feats.dtype, np.integer)):
        raise ValueError(f"{path}: field 'features' must be numeric, got dtype {feats.dtype}")
    if np.issubdtype(feats.dtype, np.floating):
        bad = int((~np.isfinite(feats)).sum())
        if bad:
            raise ValueError(f"{path}: field 'features' contains {bad} non-finite value(s) (NaN/Inf)")
    if labels.ndim not in (1, 2) or (labels.ndim == 2 and not multilabel_ok and labels.shape[1] != 1):
        want = "N ints or N × C 0/1" if multilabel_ok else "N class ids"
        raise ValueError(f"{path}: field 'labels' must be {want}, got shape {labels.shape}")
    if labels.shape[0] != feats.shape[0]:
        raise ValueError(
            f"{path}: field 'labels' has {labels.shape[0]} entries but 'features' has {feats.shape[0]} rows"
        )
    if not (
        np.issubdtype(labels.dtype, np.integer)
        or np.issubdtype(labels.dtype, np.bool_)
        or np.issubdtype(labels.dtype, np.floating)
    ):
        raise ValueError(f"{path}: field 'labels' must be numeric, got dtype {labels.dtype}")
    if np.issubdtype(labels.dtype, np.floating):
        if not np.isfinite(labels).all() or not (labels == np.round(labels)).all():
            raise ValueError(f"{path}: field 'labels' must hold integers (class ids or 0/1)")
        labels = labels.astype(np.int64)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    return feats, labels


def _print_table(result: dict[str, Any], title: str, stream: TextIO) -> None:
    print_table(title, ["metric", "value"], list(result.items()), console=Console(file=stream))


def eval_features(
    query_path: str | os.PathLike,
    gallery_path: str | os.PathLike,
    protocol: str = "sbir",
    ks: Sequence[int] = (100, 200),
    ap: str = "voc",
    as_json: bool = False,
    metric: str | None = None,
    stream: TextIO | None = None,
) -> dict[str, Any]:
    """Evaluate two npz feature files; prints a table, or (``as_json``) one JSON object and nothing else.

    - ``sbir``: ``map_all`` plus ``map_<k>`` and ``p_<k>`` for each k (SAKE protocol, class-mean; the
      ``_micro`` query means too), features L2-normalised, ``metric`` default ``"l2"``.
    - ``hashing``: ``map_all`` plus ``map_<k>`` and ``p_<k>`` (DeepHash ``CalcTopMap``), raw features,
      ``metric`` default ``"l2"`` (uint8 codes compared exactly).

    Returns the metrics dict with ``protocol``, ``ap``, ``query``, ``gallery``, ``num_gallery`` added.
    """
    proto = get_protocol(protocol)
    ks = [int(k) for k in ks]
    if any(k <= 0 for k in ks):
        raise ValueError(f"--k values must be positive integers, got {ks}")
    metric = metric or "l2"
    qf, ql = load_npz_features(query_path, multilabel_ok=proto.multilabel)
    gf, gl = load_npz_features(gallery_path, multilabel_ok=proto.multilabel)
    if qf.shape[1] != gf.shape[1]:
        raise ValueError(
            f"{os.fspath(query_path)} has feature dimension {qf.shape[1]} but "
            f"{os.fspath(gallery_path)} has {gf.shape[1]}"
        )
    source = (os.fspath(query_path), os.fspath(gallery_path))
    options = {"ap": ap} if proto.ap_options else {}
    res = proto.metrics(
        qf, ql, gf, gl, map_at=("all", *ks), p_at=tuple(ks), metric=metric, source=source, **options
    )
    out: dict[str, Any] = {
        "protocol": protocol,
        "ap": ap if proto.ap_options else "calc_top_map",
        "metric": metric,
        "query": source[0],
        "gallery": source[1],
        "num_gallery": int(gf.shape[0]),
    }
    out.update(res)
    stream = stream or sys.stdout
    if as_json:
        stream.write(json.dumps(out, sort_keys=False) + "\n")
    else:
        _print_table(
            {k: v for k, v in out.items() if k not in ("query", "gallery")},
            f"{protocol}: {source[0]} → {source[1]}",
            stream,
        )
    return out
