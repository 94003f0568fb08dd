"""Is B better than A? Paired statistics over the test queries of two runs (or two sets of seeds).

Both sides must be scored on the same queries (the per-query files of :mod:`.per_query`). A metric is a
weighted sum of per-query values: the class mean (SAKE) gives each of the ``C`` classes weight ``1/C``,
shared by its ``n_c`` queries (``1/(C·n_c)`` each); the plain mean ``1/Q`` each. The statistic is that
weighted sum of the paired differences ``d_q = B_q − A_q`` (across seeds: ``d_q`` averaged over the
pairs ``(A_i, B_i)``, all on the same queries), which is ``mean(B) − mean(A)``.

- **Interval:** a percentile bootstrap (default 95 %): ``resamples`` times, draw the queries with
  replacement — within each class for a class mean (every class keeps its ``n_c`` queries and its weight),
  over all queries for a plain mean — and recompute the statistic.
- **p-value:** a two-sided paired permutation (sign-flip) test: ``resamples`` times, swap A and B of each
  query independently with probability ½ (flip the sign of its ``d_q``, the same flip in every seed) and
  recompute the statistic; ``p = (1 + #{|T*| ≥ |T|}) / (1 + resamples)``. Per query, also for class
  means: under "A and B are exchangeable" every query's swap is equally likely, and per-query flips give
  far more distinct patterns than flipping whole classes (21 unseen classes on Sketchy).

Pure numpy, vectorised over blocks of resamples; a fixed ``seed`` gives the same numbers every time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .aggregate import CLASS_MEAN, MEAN, class_blocks

__all__ = ["Comparison", "compare_paired", "bootstrap_interval", "sign_flip_p_value", "layout", "p_text"]

#: random numbers drawn per block of resamples at most (32 MB of float64)
BLOCK_CELLS = 2**22


@dataclass(frozen=True)
class Comparison:
    """One metric, B against A. ``diff`` = mean over B's runs − mean over A's runs (one run each: B − A);
    ``a`` / ``b`` the metric of every run; ``a_std`` / ``b_std`` their sample std (None for one run)."""

    metric: str
    reduction: str
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    a_mean: float
    b_mean: float
    a_std: float | None
    b_std: float | None
    a: list[float]
    b: list[float]
    n_queries: int
    n_classes: int
    resamples: int
    seed: int
    level: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def layout(labels: np.ndarray, reduction: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(order, block start, block size, weight)`` per query in ``order``: the resampling strata (the
    classes for a class mean, one block otherwise) and each query's weight in the metric."""
    n = len(labels)
    if reduction == CLASS_MEAN:
        order, counts = class_blocks(np.asarray(labels))
    elif reduction == MEAN:
        order, counts = np.arange(n), np.array([n])
    else:
        raise ValueError(f"reduction must be {CLASS_MEAN!r} or {MEAN!r}, got {reduction!r}")
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    sizes = np.repeat(counts, counts)
    return order, starts, sizes, 1.0 / (len(counts) * sizes)


def _blocks(resamples: int, n: int) -> list[int]:
    step = max(1, BLOCK_CELLS // max(1, n))
    return [min(step, resamples - s) for s in range(0, resamples, step)]


def bootstrap_interval(
    d: np.ndarray,
    starts: np.ndarray,
    sizes: np.ndarray,
    weights: np.ndarray,
    resamples: int,
    rng: np.random.Generator,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of ``Σ w·d`` over ``resamples`` stratified bootstrap draws: each position draws a
    query of its own block (``starts`` / ``sizes``, per position, ``d`` in block order)."""
    stats = []
    for b in _blocks(resamples, d.size):
        u = rng.random((b, d.size))
        u *= sizes
        pick = u.astype(np.int64)
        np.minimum(pick, sizes - 1, out=pick)  # u·n rounds up to n for u just below 1
        stats.append(d[pick + starts] @ weights)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(np.concatenate(stats), [tail, 1.0 - tail])
    return float(lo), float(hi)


def sign_flip_p_value(x: np.ndarray, resamples: int, rng: np.random.Generator) -> float:
    """Two-sided p-value of ``T = Σ x`` against independent random signs of the ``x`` (``x = w·d``)."""
    total = math.fsum(x.tolist())
    tol = 1e-9 * float(np.abs(x).sum())  # a flip equal to T up to rounding counts as as extreme
    extreme = 0
    for b in _blocks(resamples, x.size):
        bits = rng.integers(0, 256, size=(b, (x.size + 7) // 8), dtype=np.uint8)  # 8 fair coins a byte
        plus = np.unpackbits(bits, axis=1, count=x.size).astype(np.float64)
        flipped = 2.0 * (plus @ x) - total
        extreme += int(np.count_nonzero(np.abs(flipped) >= abs(total) - tol))
    return (1 + extreme) / (1 + resamples)


def p_text(p_value: float, resamples: int, digits: int = 4) -> str:
    """The p-value as printed: ``< 1/resamples`` at the test's floor ``1/(resamples + 1)`` (no resample was
    as extreme, so the true p is only known to be below it), else ``digits`` decimals."""
    if p_value <= 1.0 / (resamples + 1) * (1 + 1e-9):
        return f"< {1.0 / resamples:.{digits}g}"
    return f"{p_value:.{digits}f}"


def _mean_std(v: Sequence[float]) -> tuple[float, float | None]:
    mean = math.fsum(v) / len(v)
    return mean, (float(np.std(v, ddof=1)) if len(v) > 1 else None)


def compare_paired(
    metric: str,
    a: Sequence[np.ndarray],
    b: Sequence[np.ndarray],
    labels: np.ndarray,
    reduction: str,
    a_values: Sequence[float],
    b_values: Sequence[float],
    *,
    resamples: int = 10000,
    seed: int = 0,
    level: float = 0.95,
) -> Comparison:
    """B against A on one metric: ``a`` / ``b`` the per-query values of each run (pair ``a[i]`` with
    ``b[i]``, every run on the same queries, NaN = left out), ``labels`` the queries' class ids,
    ``reduction`` the metric's (class or plain mean), ``a_values`` / ``b_values`` each run's reported
    metric (the exact means of :mod:`.per_query`)."""
    if not a or len(a) != len(b):
        raise ValueError(
            f"need the same number of runs on each side (pairs A_i, B_i); got {len(a)} and {len(b)}"
        )
    if resamples < 1:
        raise ValueError(f"resamples must be positive, got {resamples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    runs = [np.asarray(v, dtype=np.float64) for v in (*a, *b)]
    keep = ~np.isnan(runs[0])
    for v in runs[1:]:
        if v.shape != runs[0].shape or not np.array_equal(~np.isnan(v), keep):
            raise ValueError(
                f"{metric}: the runs leave out different queries (no relevant gallery item): their galleries differ"
            )
    if not keep.any():
        raise ValueError(f"{metric}: every query is left out (no relevant gallery item): nothing to compare")
    d = np.mean([bv[keep] - av[keep] for av, bv in zip(runs[: len(a)], runs[len(a) :])], axis=0)
    order, starts, sizes, weights = layout(np.asarray(labels)[keep], reduction)
    d = d[order]
    boot, perm = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    lo, hi = bootstrap_interval(d, starts, sizes, weights, resamples, boot, level)
    p = sign_flip_p_value(d * weights, resamples, perm)
    a_mean, a_std = _mean_std(list(a_values))
    b_mean, b_std = _mean_std(list(b_values))
    return Comparison(
        metric=metric,
        reduction=reduction,
        diff=b_mean - a_mean,
        ci_low=lo,
        ci_high=hi,
        p_value=p,
        a_mean=a_mean,
        b_mean=b_mean,
        a_std=a_std,
        b_std=b_std,
        a=[float(x) for x in a_values],
        b=[float(x) for x in b_values],
        n_queries=int(keep.sum()),
        n_classes=int(len(np.unique(starts))),
        resamples=int(resamples),
        seed=int(seed),
        level=float(level),
    )
