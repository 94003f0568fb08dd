"""The evaluator's torchmetrics path, in one process and (slow) in two gloo processes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from callbacks.retrieval_evaluator import RetrievalEvaluator
from sketchquant.core.batch import DOMAIN, INDEX, LABEL, PHOTO, SKETCH
from sketchquant.core.retrieval.metrics import sbir_metrics
from sketchquant.core.retrieval.reference import DistanceRows
from sketchquant.core.retrieval.reference import sbir as ref_sbir


def _data(nq=37, ng=211, n_cls=5, d=12, seed=0):
    rng = np.random.default_rng(seed)
    ql, gl = rng.integers(0, n_cls, nq), rng.integers(0, n_cls, ng)
    centres = rng.normal(size=(n_cls, d))
    q = (centres[ql] + 1.5 * rng.normal(size=(nq, d))).astype(np.float32)
    g = (centres[gl] + 1.5 * rng.normal(size=(ng, d))).astype(np.float32)
    g[100:120] = g[:20]  # duplicates: ties
    feats = torch.from_numpy(np.concatenate([q, g]))
    labels = torch.from_numpy(np.concatenate([ql, gl]))
    domain = torch.cat([torch.full((nq,), SKETCH), torch.full((ng,), PHOTO)])
    return feats, labels, domain, (q, ql, g, gl)


class _Module:
    device = torch.device("cpu")


def test_evaluator_collects_and_matches_functional_and_reference():
    feats, labels, domain, (q, ql, g, gl) = _data()
    n = feats.shape[0]
    ev = RetrievalEvaluator(map_at=("all", 50), p_at=(10, 100), grid=False, prototypes=False)
    perm = torch.from_numpy(np.random.default_rng(1).permutation(n))
    for part in list(perm.split(40)) + [perm[:9]]:  # the last batch repeats samples, like a padded sampler
        batch = {LABEL: labels[part], DOMAIN: domain[part], INDEX: part}
        ev._collect({"embeddings": {"raw": feats[part], "codes": 2 * feats[part]}}, batch, _Module())
    data = ev.gathered()
    assert torch.equal(data[INDEX], torch.arange(n)) and torch.equal(data["emb/raw"], feats)
    got = ev.compute(data, "val")
    want = sbir_metrics(q, ql, g, gl, map_at=("all", 50), p_at=(10, 100))
    for k, v in want.items():
        assert got[f"val/{k}"] == v and got[f"val/codes/{k}"] == pytest.approx(v, abs=1e-6)
    ref = ref_sbir(DistanceRows(q, g), ql, gl, ["all", 50], [10, 100])
    for k, v in ref.items():
        assert got[f"val/{k}"] == pytest.approx(v, abs=1e-6), k
    assert got["val/chance_map_all"] > 0
