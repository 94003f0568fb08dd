"""Retrieval engine: protocol-exact metrics, prototype (PQ) galleries, FAISS indexes, npz evaluation.

Plain torch / numpy / faiss — no Lightning imports here.
"""

from .index import build_code_index, build_float_index, index_metadata, load_index, save_index, search_index
from .metrics import (
    hashing_metrics,
    metric_name,
    sbir_metrics,
    sbir_metrics_from_distances,
    topk_neighbors,
)
from .npz_eval import eval_features, load_npz_features
from .prototypes import (
    fit_product_quantizer,
    fuse_features,
    fused_distance_fn,
    prototype_features,
    prototype_retrieval_metrics,
)
from .torchmetric import RetrievalMetric

__all__ = [
    "RetrievalMetric",
    "build_code_index",
    "build_float_index",
    "eval_features",
    "fit_product_quantizer",
    "fuse_features",
    "fused_distance_fn",
    "hashing_metrics",
    "index_metadata",
    "load_index",
    "load_npz_features",
    "metric_name",
    "prototype_features",
    "prototype_retrieval_metrics",
    "save_index",
    "sbir_metrics",
    "sbir_metrics_from_distances",
    "search_index",
    "topk_neighbors",
]
