"""Prototype (PQ) gallery features and the two fusions (docs/method.md §B S5)."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from sketchquant.core.retrieval import reference
from sketchquant.core.retrieval.metrics import sbir_metrics
from sketchquant.core.retrieval.prototypes import (
    fit_product_quantizer,
    fitted_k,
    fuse_features,
    fused_distance_fn,
    prototype_features,
    prototype_retrieval_metrics,
)


def _data(n=256, d=16, n_cls=4, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_cls, n)
    centres = rng.normal(size=(n_cls, d))
    x = (centres[labels] + 0.8 * rng.normal(size=(n, d))).astype(np.float32)
    return x, labels


def test_prototypes_equal_faiss_decode():
    x, _ = _data()
    pq = fit_product_quantizer(x, m=2, k=8, seed=0)
    assert isinstance(pq, faiss.ProductQuantizer) and pq.M == 2 and pq.ksub == 8
    proto = prototype_features(pq, x)
    np.testing.assert_array_equal(proto, pq.decode(pq.compute_codes(x)))
    assert proto.dtype == np.float32 and proto.flags["C_CONTIGUOUS"]
    # each half is one of the K centres of its subspace
    cents = faiss.vector_to_array(pq.centroids).reshape(pq.M, pq.ksub, pq.dsub)
    for s in range(2):
        sub = proto[:, s * 8 : (s + 1) * 8]
        assert all(np.abs(cents[s] - row).sum(1).min() == 0 for row in sub)
    assert len({tuple(r) for r in proto}) <= 64
    # same seed → same quantiser
    np.testing.assert_array_equal(prototype_features(fit_product_quantizer(x, m=2, k=8, seed=0), x), proto)


def test_feature_fusion_formula():
    x, _ = _data()
    proto = prototype_features(fit_product_quantizer(x, 2, 8), x)
    np.testing.assert_allclose(fuse_features(x, proto, 0.2), 0.8 * proto + 0.2 * x, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(fuse_features(x, proto, 0.0), proto)
    with pytest.raises(ValueError, match=r"lam must be in \[0, 1\]"):
        fuse_features(x, proto, 1.5)
    with pytest.raises(ValueError, match="raw has shape"):
        fuse_features(x[:, :8], proto, 0.2)


def test_distance_fusion_formula():
    """ClusterRetr: (1 − λ)·‖q − x̂‖² (nanopq's squared asymmetric distance) + λ·‖q − x‖ (unsquared)."""
    x, _ = _data()
    q = x[:10] + 0.1
    proto = prototype_features(fit_product_quantizer(x, 2, 8), x)
    fn = fused_distance_fn(q, x, proto, lam=0.3)
    got = fn(torch.arange(3, 7)).numpy()
    qq = q[3:7].astype(np.float64)
    want = 0.7 * ((qq[:, None] - proto[None]) ** 2).sum(2) + 0.3 * np.linalg.norm(
        qq[:, None] - x[None], axis=2
    )
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_distance_fusion_equals_clusterretr_transliteration():
    """Ranked by nanopq's dtable/adist + scipy's cdist, transliterated: the same metrics."""
    x, labels = _data(n=300)
    q, ql = x[:60] + 0.05, labels[:60]
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    pq = fit_product_quantizer(xn, m=2, k=8, seed=0)
    cents = faiss.vector_to_array(pq.centroids).reshape(pq.M, pq.ksub, pq.dsub)
    proto = prototype_features(pq, xn)  # faiss packs 3-bit codes: read each sub-vector's centre back
    codes = np.stack(
        [((proto[:, None, s * 8 : (s + 1) * 8] - cents[s][None]) ** 2).sum(-1).argmin(1) for s in range(2)], 1
    )
    dist = reference.clusterretr_fused_distances(qn, xn, cents, codes, lam=0.2)
    want = reference.sbir(dist, ql, labels, ["all", 100], [100])
    got = prototype_retrieval_metrics(
        q, ql, x, labels, m=2, k=8, lam=0.2, fusion="distance", map_at=("all", 100), p_at=(100,)
    )["fused"]
    for key in ("map_all", "map_100", "p_100"):
        assert got[key] == pytest.approx(want[key], abs=1e-6), key


def test_pq_trains_on_every_gallery_point_by_default():
    """faiss would sample 256 points per centre; ClusterRetr's k-means sees every point."""
    x, _ = _data(n=600)
    every = fit_product_quantizer(x, m=2, k=2, seed=0)
    sampled = fit_product_quantizer(x, m=2, k=2, seed=0, max_points_per_centroid=16)
    assert every.cp.max_points_per_centroid * 2 >= 600
    assert sampled.cp.max_points_per_centroid == 16
    assert not np.array_equal(
        faiss.vector_to_array(every.centroids), faiss.vector_to_array(sampled.centroids)
    )


def test_few_points_warning_says_what_it_means():
    x, _ = _data(n=64)
    with pytest.warns(UserWarning, match=r"64 gallery features for K=8 .*eval\.pq_k"):
        fit_product_quantizer(x, m=2, k=8)


@pytest.mark.parametrize(
    "n, k, min_points, expected",
    [
        (100, 32, 39, 2),  # a small folder: 100 // 39 = 2
        (600, 32, 39, 8),  # the embedded benchmark: 600 // 39 = 15 -> 8
        (1248, 32, 39, 32),  # 39 * 32 points: the bound itself
        (1247, 32, 39, 16),
        (12694, 32, 39, 32),  # Sketchy's unseen gallery keeps ClusterRetr's K
        (50, 32, 39, 2),  # never below 2
        (10, 32, 0, 8),  # min_points 0: pq_k capped at the gallery size
        (600, 32, 0, 32),
    ],
)
def test_fitted_k_hand_values(n, k, min_points, expected):
    assert fitted_k(n, k, min_points) == expected


def test_fitted_k_fits_without_warning():
    x, _ = _data(n=600)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit_product_quantizer(x, m=2, k=fitted_k(len(x), 32))
    with pytest.raises(ValueError, match="at least 2 gallery points, got 1"):
        fitted_k(1, 32)


def test_prototype_retrieval_metrics_both_fusions():
    x, labels = _data(n=300)
    q, ql = x[:40] + 0.05, labels[:40]
    for fusion in ("feature", "distance"):
        res = prototype_retrieval_metrics(q, ql, x, labels, m=2, k=16, lam=0.2, fusion=fusion, p_at=(10,))
        assert set(res) == {"raw", "proto", "fused"}
        for part in res.values():
            assert 0.0 <= part["map_all"] <= 1.0 and "p_10" in part
    # raw equals the plain evaluation (features normalised once, the same way)
    plain = sbir_metrics(q, ql, x, labels, p_at=(10,))
    assert res["raw"]["map_all"] == pytest.approx(plain["map_all"], abs=1e-9)
    # feature fusion by hand
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    xh = prototype_features(fit_product_quantizer(xn, 2, 16, seed=0), xn)
    res_f = prototype_retrieval_metrics(q, ql, x, labels, m=2, k=16, lam=0.2, fusion="feature", p_at=(10,))
    want = sbir_metrics(qn, ql, 0.8 * xh + 0.2 * xn, labels, normalize=False, p_at=(10,))
    assert res_f["fused"]["map_all"] == pytest.approx(want["map_all"], abs=1e-6)
    assert res_f["proto"]["map_all"] == pytest.approx(
        sbir_metrics(qn, ql, xh, labels, normalize=False, p_at=(10,))["map_all"], abs=1e-9
    )


def test_pq_errors():
    x, _ = _data(n=100, d=10)
    with pytest.raises(ValueError, match="d=10 is not divisible by m=3"):
        fit_product_quantizer(x, m=3, k=8)
    with pytest.raises(ValueError, match="k=128 centres per subspace is more than the gallery size 100"):
        fit_product_quantizer(x, m=2, k=128)
    with pytest.raises(ValueError, match="power of two"):
        fit_product_quantizer(x, m=2, k=24)
    with pytest.raises(ValueError, match="unknown fusion"):
        prototype_retrieval_metrics(x, np.zeros(100), x, np.zeros(100), fusion="both")
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="gallery_feats contains 1 non-finite"):
        fit_product_quantizer(bad, m=2, k=8)
    pq = fit_product_quantizer(x, m=2, k=8)
    with pytest.raises(ValueError, match="dimension 8 but the quantiser was fitted on dimension 10"):
        prototype_features(pq, x[:, :8])
