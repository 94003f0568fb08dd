"""Input checks for the retrieval metrics: every error names the array (and its source file) and the problem."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

METRICS = ("l2", "ip")
APS = ("voc", "standard")


def named(field: str, source: str | None) -> str:
    return f"{field} ({source})" if source else field


def to_tensor(x: Any, field: str, source: str | None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise ValueError(f"{named(field, source)} cannot be read as an array: {exc}") from exc
    if arr.dtype == object:
        raise ValueError(f"{named(field, source)} must be a numeric array, got dtype object")
    if arr.dtype == np.uint16 or arr.dtype == np.uint32 or arr.dtype == np.uint64:
        arr = arr.astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(arr))


def check_feats(x: Any, field: str, source: str | None) -> torch.Tensor:
    t = to_tensor(x, field, source)
    if t.ndim != 2:
        raise ValueError(f"{named(field, source)} must be a 2-D array (N × d), got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{named(field, source)} is empty (0 rows)")
    if t.shape[1] == 0:
        raise ValueError(f"{named(field, source)} has dimension 0")
    if t.is_complex():
        raise ValueError(f"{named(field, source)} must be real-valued")
    if t.is_floating_point() and not bool(torch.isfinite(t.sum())):
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise ValueError(f"{named(field, source)} contains {bad} non-finite value(s) (NaN/Inf)")
    return t


def check_dims(q: torch.Tensor, g: torch.Tensor, names: tuple[str, str]) -> None:
    if q.shape[1] != g.shape[1]:
        raise ValueError(
            f"feature dimensions differ: {names[0]} has dimension {q.shape[1]} "
            f"but {names[1]} has dimension {g.shape[1]}"
        )


def check_single_labels(y: Any, n: int, field: str, feats_field: str, source: str | None) -> torch.Tensor:
    t = to_tensor(y, field, source)
    if t.ndim == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim != 1:
        raise ValueError(
            f"{named(field, source)} must be 1-D class ids for the sbir protocol, got shape {tuple(t.shape)}"
        )
    if t.shape[0] != n:
        raise ValueError(f"{named(field, source)} has {t.shape[0]} entries but {feats_field} has {n} rows")
    if t.is_floating_point():
        if not bool(torch.isfinite(t).all()) or not bool((t == t.round()).all()):
            raise ValueError(f"{named(field, source)} must hold integer class ids")
    return t.to(torch.int64)


def check_multi_labels(
    y: Any, n: int, field: str, feats_field: str, source: str | None, num_classes: int | None = None
) -> torch.Tensor:
    t = to_tensor(y, field, source)
    if t.ndim == 1:
        if t.is_floating_point() and not bool((t == t.round()).all()):
            raise ValueError(f"{named(field, source)} must hold integer class ids (1-D) or 0/1 rows (2-D)")
        if t.shape[0] != n:
            raise ValueError(
                f"{named(field, source)} has {t.shape[0]} entries but {feats_field} has {n} rows"
            )
        t = t.to(torch.int64)
        if t.numel() and int(t.min()) < 0:
            raise ValueError(f"{named(field, source)} has negative class ids")
        c = num_classes if num_classes is not None else int(t.max()) + 1
        return F.one_hot(t, c).to(torch.float32)
    if t.ndim != 2:
        raise ValueError(
            f"{named(field, source)} must be N ints or an N×C 0/1 array, got shape {tuple(t.shape)}"
        )
    if t.shape[0] != n:
        raise ValueError(f"{named(field, source)} has {t.shape[0]} rows but {feats_field} has {n} rows")
    t = t.to(torch.float32)
    if not bool(((t == 0) | (t == 1)).all()):
        raise ValueError(f"{named(field, source)} must be a 0/1 multi-hot array")
    return t


def parse_ks(ks: Any, field: str) -> list[int | str]:
    if ks is None:
        return []
    if isinstance(ks, (int, str)):
        ks = [ks]
    out: list[int | str] = []
    for k in ks:
        if isinstance(k, str):
            if k.lower() != "all":
                try:
                    k = int(k)
                except ValueError:
                    raise ValueError(
                        f"{field} contains {k!r}; k must be a positive integer or 'all'"
                    ) from None
            else:
                out.append("all")
                continue
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or int(k) <= 0:
            raise ValueError(f"{field} contains k={k!r}; k must be a positive integer or 'all'")
        out.append(int(k))
    # keep order, drop duplicates
    seen: list[int | str] = []
    for k in out:
        if k not in seen:
            seen.append(k)
    return seen


def check_choice(value: str, allowed: Sequence[str], field: str) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {field} {value!r}; expected one of {', '.join(map(repr, allowed))}")
    return value


def sources(source: Sequence[str] | None) -> tuple[str | None, str | None]:
    if source is None:
        return None, None
    if isinstance(source, str):
        return source, source
    s = list(source)
    if len(s) != 2:
        raise ValueError("source must be a pair of names (query, gallery)")
    return s[0], s[1]


def check_ks(map_at: Any, p_at: Any) -> tuple[list[int | str], list[int | str]]:
    map_ks = parse_ks(map_at, "map_at")
    p_ks = parse_ks(p_at, "p_at")
    if not map_ks and not p_ks:
        raise ValueError("nothing to compute: map_at and p_at are both empty")
    return map_ks, p_ks


def check_pair(
    query_feats: Any, gallery_feats: Any, sq: str | None, sg: str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both feature arrays checked, and their dimensions against each other."""
    q = check_feats(query_feats, "query_feats", sq)
    g = check_feats(gallery_feats, "gallery_feats", sg)
    check_dims(q, g, (named("query_feats", sq), named("gallery_feats", sg)))
    return q, g


def check_query_shard(query_shard: Any) -> tuple[int, int]:
    """``(rank, world)`` with ``0 ≤ rank < world``; ``None`` → ``(0, 1)``."""
    if query_shard is None:
        return 0, 1
    try:
        rank, world = (int(v) for v in query_shard)
    except (TypeError, ValueError):
        raise ValueError(f"query_shard must be a pair (rank, world), got {query_shard!r}") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"query_shard must satisfy 0 <= rank < world, got {query_shard!r}")
    return rank, world


def metric_name(prefix: str, k: int | str) -> str:
    """``metric_name("map", "all") == "map_all"``, ``metric_name("p", 100) == "p_100"``."""
    return f"{prefix}_{k}"
