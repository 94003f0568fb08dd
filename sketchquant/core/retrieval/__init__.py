"""Retrieval engine: protocol-exact metrics, prototype (PQ) galleries, FAISS indexes, npz evaluation.

Plain torch / numpy / faiss — no Lightning imports here. Names load on first use (FAISS and
torchmetrics cost seconds to import; a metric-only user needs neither).
"""

from sketchquant.core.lazy import lazy_exports

_EXPORTS = {
    "MetricOptions": ".metrics",
    "RetrievalMetric": ".torchmetric",
    "build_code_index": ".index",
    "build_float_index": ".index",
    "eval_features": ".npz_eval",
    "fit_product_quantizer": ".prototypes",
    "fuse_features": ".prototypes",
    "fused_distance_fn": ".prototypes",
    "hashing_metrics": ".metrics",
    "index_metadata": ".index",
    "load_index": ".index",
    "load_npz_features": ".npz_eval",
    "metric_name": ".metrics",
    "prototype_features": ".prototypes",
    "prototype_retrieval_metrics": ".prototypes",
    "save_index": ".index",
    "sbir_metrics": ".metrics",
    "sbir_metrics_from_distances": ".metrics",
    "search_index": ".index",
    "topk_neighbors": ".metrics",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
