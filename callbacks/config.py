"""The config dataclass of :class:`~sketchquant.callbacks.retrieval_evaluator.RetrievalEvaluator` (the
``eval`` section), torch-free. Each field's default is the one place that default is written."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sketchquant.core.schema import choice

__all__ = ["EvalConfig"]


@dataclass
class EvalConfig:
    """Retrieval evaluation (docs/method.md §C) run by :class:`RetrievalEvaluator`."""

    protocol: str = choice("sbir", "hashing")
    map_at: list[Any] = field(default_factory=lambda: ["all", 200])
    p_at: list[int] = field(default_factory=lambda: [100, 200])
    ap: str = choice("voc", "standard")
    metric: str = choice("l2", "ip")
    normalize: bool = True
    memory_budget_mb: int = 512
    prototypes: bool = True  # method B test: also prototype and fused gallery features
    pq_m: int = 2
    pq_k: int = 32  # at most; fewer when the gallery is small (pq_min_points)
    #: at least this many gallery points per PQ centre (faiss' own minimum): K is lowered to the largest
    #: power of two the gallery supports (600 photos → 8, 100 → 2); 0 keeps pq_k (capped at the gallery)
    pq_min_points: int = 39
    pq_max_points_per_centroid: int | None = None  # None: k-means on every gallery point
    fusion: str = choice("feature", "distance")
    fusion_lambda: float = 0.2
    grid: bool = True
    grid_queries: int = 4
    grid_topk: int = 10
