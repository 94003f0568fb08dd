"""The evaluator's torchmetrics path, in one process and (slow) in two gloo processes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sketchquant.app.methods import METHODS
from sketchquant.callbacks.config import EvalConfig
from sketchquant.callbacks.retrieval_evaluator import RetrievalEvaluator
from sketchquant.core.batch import DOMAIN, INDEX, LABEL, PHOTO, SKETCH
from sketchquant.core.retrieval.metrics import sbir_metrics
from sketchquant.core.retrieval.reference import DistanceRows
from sketchquant.core.retrieval.reference import sbir as ref_sbir

ZS_FEATURES = METHODS["zs_sbir"].features  # raw logged unnamed, proto and fused derived at test


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
    ev = RetrievalEvaluator(
        EvalConfig(map_at=["all", 50], p_at=[10, 100], grid=False, prototypes=False), ZS_FEATURES
    )
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


# ----------------------------------------------------------------------------------------------------
# two processes (gloo): sharded ranking, exactly the one-process numbers
# ----------------------------------------------------------------------------------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _evaluate_all(shard_feed, world: int):
    """(RetrievalMetric sbir, RetrievalMetric hashing, evaluator test metrics with prototypes, #ranked)."""
    from sketchquant.core.retrieval import engine
    from sketchquant.core.retrieval.torchmetric import RetrievalMetric

    ranked = []
    run = engine.run

    def counting_run(fill, queries, *args, **kwargs):
        ranked.append(int(queries.numel()))
        return run(fill, queries, *args, **kwargs)

    engine.run = counting_run
    try:
        # small chunks: processes share the queries chunk by chunk
        sbir = RetrievalMetric("sbir", map_at=("all", 50), p_at=(10, 100), chunk_size=5)
        hashing = RetrievalMetric("hashing", map_at=(30, "all"), p_at=(20,), chunk_size=4)
        ev = RetrievalEvaluator(
            EvalConfig(map_at=["all", 50], p_at=[10], grid=False, pq_m=2, pq_k=4, memory_budget_mb=0.05),
            ZS_FEATURES,
        )
        for feats, labels, domain, index in shard_feed:
            sbir.update(feats, labels, domain, index)
            hashing.update(torch.sign(feats), labels, domain, index)
            batch = {LABEL: labels, DOMAIN: domain, INDEX: index}
            ev._collect({"embeddings": {"raw": feats}}, batch, _Module())
        out = (sbir.compute(), hashing.compute(), ev.compute(ev.gathered(), "test"))
    finally:
        engine.run = run
    return (*out, sum(ranked))


def _feed(rank: int, world: int, batch: int = 17):
    """This rank's batches, as a DistributedSampler deals them (padded by repeating the first samples)."""
    feats, labels, domain, _ = _data(nq=37, ng=210)  # 247 samples: odd, so the sampler pads
    n = feats.shape[0]
    per = -(-n // world)
    order = list(range(n)) + list(range(per * world - n))
    mine = torch.tensor(order[rank::world])
    return [(feats[p], labels[p], domain[p], p) for p in mine.split(batch)]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import os

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.save(_evaluate_all(_feed(rank, world), world), f"{out_dir}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_processes_equal_one_process_exactly(tmp_path):
    import torch.multiprocessing as mp

    one_sbir, one_hash, one_ev, one_ranked = _evaluate_all(_feed(0, 1), 1)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for sbir, hashing, ev, ranked in ranks:
        assert sbir == one_sbir and hashing == one_hash and ev == one_ev  # exact, every rank
        assert 0 < ranked < one_ranked  # each process ranked only its share of the queries
    assert sum(r[3] for r in ranks) == one_ranked
    assert {"test/map_all", "test/proto/map_all", "test/fused/map_all"} <= set(one_ev)
    # and the numbers are the reference's
    _, _, _, (q, ql, g, gl) = _data(nq=37, ng=210)
    ref = ref_sbir(DistanceRows(q, g), ql, gl, ["all", 50], [10, 100])
    for k, v in ref.items():
        assert one_sbir[k] == pytest.approx(v, abs=1e-6), k
