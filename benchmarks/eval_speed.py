"""Speed of the chunked, exact SBIR evaluation at benchmark scale, against a SAKE-style reference.

    python benchmarks/eval_speed.py --scale tuberlin|quickdraw|all [--ref-queries 40] [--out PATH]

Data: random class-clustered float32 features, d = 512, 30 unseen classes (TU-Berlin Ext: 2,400
queries × 27,989 gallery; QuickDraw Ext: 92,291 × 54,151). Metrics: mAP@all, mAP@200, P@100, P@200.

- ``seconds``: wall time of one ``sbir_metrics`` call (normalisation, distances, ranking, metrics);
  ``cpu_seconds`` its process CPU time and ``load_avg_1min_before_after`` the machine's 1-minute load
  average around it (timings on a shared machine are only comparable at similar load).
- ``peak_rss_mb``: peak resident set size of the process that ran that scale (``resource.getrusage``
  ``ru_maxrss``; each scale runs in its own child process, so it includes that scale's data arrays),
  and ``data_mb`` the size of the feature arrays themselves.
- ``reference``: SAKE's loop (``eval_AP_inner`` / ``VOCap`` with its Python loop / ``eval_precision``,
  from ``sketchquant.core.retrieval.reference``) with one distance row per query, ties by index, timed on
  the first ``--ref-queries`` queries and extrapolated per query to the whole query set
  (``ref_seconds_extrapolated``); ``speedup`` = that / ``seconds``. The same subsample is evaluated by
  the fast code too and the largest difference of the aggregated metrics is reported (``max_abs_diff``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SCALES = {
    "tuberlin": dict(n_query=2400, n_gallery=27989, n_classes=30),
    "quickdraw": dict(n_query=92291, n_gallery=54151, n_classes=30),
}
DIM = 512
MAP_AT = ("all", 200)
P_AT = (100, 200)


def make_data(n_query: int, n_gallery: int, n_classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, DIM), dtype=np.float32)
    ql = rng.integers(0, n_classes, n_query)
    gl = rng.integers(0, n_classes, n_gallery)
    q = rng.standard_normal((n_query, DIM), dtype=np.float32)
    q *= 5.0
    q += centres[ql]
    g = rng.standard_normal((n_gallery, DIM), dtype=np.float32)
    g *= 5.0
    g += centres[gl]
    return q, ql, g, gl


def reference(q, ql, g, gl):
    """SAKE's per-query loop (sketchquant.core.retrieval.reference), one float64 distance row at a time."""
    from sketchquant.core.retrieval.reference import DistanceRows, sbir

    res = sbir(DistanceRows(q, g), ql, gl, MAP_AT, P_AT)
    return {k: v for k, v in res.items() if k.startswith(("map_", "p_")) and not k.endswith("_micro")}


def run_scale(name: str, ref_queries: int) -> dict:
    import torch

    from sketchquant.core.retrieval.metrics import sbir_metrics

    cfg = SCALES[name]
    t0 = time.perf_counter()
    q, ql, g, gl = make_data(**cfg)
    gen_s = time.perf_counter() - t0
    data_mb = (q.nbytes + g.nbytes + ql.nbytes + gl.nbytes) / 2**20
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    c0 = time.process_time()
    res = sbir_metrics(q, ql, g, gl, map_at=MAP_AT, p_at=P_AT)
    seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - c0
    load_after = os.getloadavg()[0]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    nr = min(ref_queries, q.shape[0])
    t0 = time.perf_counter()
    ref = reference(q[:nr], ql[:nr], g, gl)
    ref_s = time.perf_counter() - t0
    fast_sub = sbir_metrics(q[:nr], ql[:nr], g, gl, map_at=MAP_AT, p_at=P_AT)
    diff = max(abs(fast_sub[k] - v) for k, v in ref.items())
    ref_total = ref_s / nr * q.shape[0]
    return {
        "scale": name,
        **cfg,
        "dim": DIM,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu_seconds, 1),
        "load_avg_1min_before_after": [round(load_before, 2), round(load_after, 2)],
        "peak_rss_mb": round(peak_mb, 1),
        "data_mb": round(data_mb, 1),
        "data_generation_seconds": round(gen_s, 2),
        "ref_queries": nr,
        "ref_seconds": round(ref_s, 3),
        "ref_seconds_per_query": round(ref_s / nr, 5),
        "ref_seconds_extrapolated": round(ref_total, 1),
        "speedup": round(ref_total / seconds, 1),
        "max_abs_diff_vs_reference": diff,
        "metrics": {k: v for k, v in res.items()},
    }


def _child(name: str, ref_queries: int, queue) -> None:
    try:
        queue.put(run_scale(name, ref_queries))
    except BaseException as exc:  # report, never hang the parent
        queue.put({"scale": name, "error": repr(exc)})


def write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=2)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=["tuberlin", "quickdraw", "all"], default="tuberlin")
    ap.add_argument("--ref-queries", type=int, default=40)
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "eval_speed.json"
    )
    args = ap.parse_args(argv)
    names = list(SCALES) if args.scale == "all" else [args.scale]
    ctx = mp.get_context("spawn")
    results = []
    for name in names:
        queue = ctx.Queue()
        proc = ctx.Process(target=_child, args=(name, args.ref_queries, queue))
        proc.start()
        results.append(queue.get())
        proc.join()
        r = results[-1]
        if "error" in r:
            print(f"{name}: FAILED {r['error']}", file=sys.stderr)
        else:
            print(f"{name}: {r['seconds']:.1f} s done", file=sys.stderr, flush=True)
    hdr = (
        f"{'scale':10s} {'queries×gallery':>16s} {'seconds':>8s} {'peak RSS MB':>11s} {'ref s/query':>11s} "
        f"{'ref total s (extrap.)':>21s} {'speed-up':>8s} {'max|diff|':>9s}"
    )
    print(hdr)
    for r in results:
        if "error" in r:
            print(f"{r['scale']:10s} error: {r['error']}")
            continue
        print(
            f"{r['scale']:10s} {r['n_query']:>7d}×{r['n_gallery']:<8d} {r['seconds']:8.2f} {r['peak_rss_mb']:11.0f} "
            f"{r['ref_seconds_per_query']:11.4f} {r['ref_seconds_extrapolated']:21.1f} {r['speedup']:8.1f} "
            f"{r['max_abs_diff_vs_reference']:9.1e}"
        )
    print(
        "peak RSS = ru_maxrss of the child process that ran the scale (includes its feature arrays); "
        "reference timed on the first --ref-queries queries and extrapolated per query."
    )
    write_json_atomic(args.out, {"results": results, "note": "see benchmarks/eval_speed.py docstring"})
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
