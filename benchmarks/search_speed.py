"""Gallery speed (issue 13): index build throughput, one-sketch query latency, bytes per photo, and the
recall@10 of the approximate index types against exact ``flat``.

    python benchmarks/search_speed.py [--sizes 1000,100000,1000000] [--types flat,ivfpq,hnsw]
                                      [--build-images 2048] [--batch-size 64] [--workers 2] [--tiny]
                                      [--hnsw-max-size 200000] [--build-input-sizes config,224]
                                      [--out benchmarks/results/search_speed.json]

- **build**: ``Gallery.build`` over ``--build-images`` generated JPEG photos (224 px unless ``--tiny``)
  with the default method-B network (random weights: speed only), images/s of the whole build (decode,
  resize, ``Trainer.predict``, PQ fit, indexes, atomic writes) against a bare ``forward`` of the same
  network on ready tensors of its input size (the config's ``data.image_size``) at the same batch size
  (``ratio``; goal ≥ 0.9), once per ``--build-input-sizes`` entry: the default experiment's input
  (64 px: the forward is so cheap that decoding the 224 px JPEGs costs as much) and 224 px (the
  published protocols' input). Queries use the first.
- **query**: one sketch PNG from disk → decode + transform + forward + search, p50 / p99 over
  ``--queries`` runs, on galleries of synthetic class-clustered L2-normalised features of each size (``raw`` features,
  flat index); ``search_ms`` the FAISS search alone for each index type (goal: p50 ≤ 50 ms at 100k flat;
  search ≤ 10 ms at 1M ivfpq with recall@10 ≥ 0.95).
- **bytes per photo**: the serialised index / N, plus the 4·d bytes of stored features every gallery keeps
  (``features.npz``, used by ``--update``).

Timings depend on the machine's load: the results file records it before and after, with the commit,
the command and the machine (``benchmarks/common.py``). Run it alone (the lead runs the benchmarks at the
end); ``--sizes 1000 --build-images 32 --queries 10 --tiny --out /tmp/x.json`` is a seconds-long smoke
run.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import random_checkpoint, started, write_results  # noqa: E402


def _photos(folder: Path, n: int, size: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        d = folder / f"class{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(arr).save(d / f"{i:06d}.jpg", quality=90)


def bench_build(tmp: Path, args, image_size: int | None = None) -> dict:
    import torch

    from sketchquant.app.gallery import Gallery

    importlib.import_module("sketchquant.app.serve")  # the page imports cleanly (no private name)

    over = [f"data.image_size={image_size}"] if image_size else []
    ckpt = random_checkpoint(tmp / f"bench-{image_size or 'config'}.ckpt", args.tiny, over)
    size = 32 if args.tiny else 224
    if not (tmp / "photos").is_dir():
        _photos(tmp / "photos", args.build_images, size)
    out = tmp / f"gallery-{image_size or 'config'}"
    t0 = time.perf_counter()
    rep = Gallery.build(
        ckpt, tmp / "photos", out, batch_size=args.batch_size, workers=args.workers, quiet=True
    )
    build_s = time.perf_counter() - t0
    g = Gallery.open(out)
    from sketchquant.app.gallery.store import eval_transform

    _, hw = eval_transform(g.cfg)  # the network's input: the photos are resized to the config's image size
    x = torch.randn(args.batch_size, 3, *hw)
    batches = max(1, args.build_images // args.batch_size)
    with torch.inference_mode():
        g.network(x)  # warm-up
        t0 = time.perf_counter()
        for _ in range(batches):
            g.network(x)
        fwd_s = time.perf_counter() - t0
    build_ips = rep.images / build_s
    fwd_ips = batches * args.batch_size / fwd_s
    return {
        "images": rep.images,
        "photo_size": size,
        "input_size": list(hw),
        "batch_size": args.batch_size,
        "workers": args.workers,
        "build_seconds": build_s,
        "build_images_per_s": build_ips,
        "forward_images_per_s": fwd_ips,
        "ratio": build_ips / fwd_ips,
        "gallery": g,
    }


def _synthetic(g, n: int, seed: int = 0, clusters: int = 1000) -> np.ndarray:
    """Class-clustered L2-normalised features (photo collections have classes; uniform noise in 512
    dimensions has no neighbours worth the name), the same cluster centres for gallery and queries."""
    d = g.stored["raw"].shape[1]
    centres = np.random.default_rng(12345).standard_normal((clusters, d), dtype=np.float32)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d), dtype=np.float32)
    x *= 0.7
    x += centres[rng.integers(0, clusters, n)]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def bench_query(g, n: int, types: list[str], sketch: Path, args) -> list[dict]:
    from sketchquant.app.gallery import Gallery
    from sketchquant.core.retrieval.factory import index_bytes, make_index
    from sketchquant.core.retrieval.index import search_index

    x = _synthetic(g, n)
    d = x.shape[1]
    q_feats = g.encode([str(sketch)] * 1)
    rows = []
    truth = None
    queries = _synthetic(g, args.queries, seed=1)
    for kind in types:
        if kind == "hnsw" and n > args.hnsw_max_size:
            rows.append(
                {"size": n, "type": kind, "error": f"skipped: above --hnsw-max-size {args.hnsw_max_size}"}
            )
            continue
        t0 = time.perf_counter()
        try:
            index = make_index(kind, x)
        except ValueError as err:
            rows.append({"size": n, "type": kind, "error": str(err)})
            continue
        build_s = time.perf_counter() - t0
        times = []
        for i in range(args.queries):
            t0 = time.perf_counter()
            search_index(index, queries[i : i + 1], 10)
            times.append(time.perf_counter() - t0)
        _, ind = search_index(index, queries, 10)
        if kind == "flat":
            truth = ind
        recall = (
            float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, ind)]))
            if truth is not None
            else None
        )
        row = {
            "size": n,
            "type": kind,
            "index_build_s": build_s,
            "search_ms_p50": 1e3 * float(np.percentile(times, 50)),
            "search_ms_p99": 1e3 * float(np.percentile(times, 99)),
            "recall_at_10": recall,
            "bytes_per_photo_index": index_bytes(index) / n,
            "bytes_per_photo_total": index_bytes(index) / n + 4 * d,
        }
        if kind == "flat":  # end to end: decode + transform + forward + search, one sketch from disk
            manifest = dict(g.manifest)
            manifest.update(
                count=n,
                items={"relpaths": [f"synthetic/{i}" for i in range(n)], "labels": [None] * n},
                settings={**g.settings, "features": ["raw"], "default": "raw"},
            )
            big = Gallery(g.path, manifest, g.cfg, g.network, {"raw": index}, {"raw": x})
            big.search([str(sketch)], k=10)  # warm-up
            e2e = []
            for _ in range(args.queries):
                t0 = time.perf_counter()
                big.search([str(sketch)], k=10)
                e2e.append(time.perf_counter() - t0)
            row["query_ms_p50"] = 1e3 * float(np.percentile(e2e, 50))
            row["query_ms_p99"] = 1e3 * float(np.percentile(e2e, 99))
        rows.append(row)
    del q_feats
    return rows


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,100000,1000000")
    ap.add_argument("--types", default="flat,ivfpq,hnsw")
    ap.add_argument("--build-images", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument(
        "--hnsw-max-size", type=int, default=200_000, help="skip hnsw above this size (its build takes long)"
    )
    ap.add_argument("--tiny", action="store_true", help="timm's test network at 32 px (smoke runs)")
    ap.add_argument(
        "--build-input-sizes",
        default="config,224",
        help="network input sizes of the build rows: 'config' (the default experiment's) and/or pixels",
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/search_speed.json"))
    args = ap.parse_args(argv)
    meta = started(None if argv is None else [sys.argv[0], *argv])

    import torch
    from PIL import Image, ImageDraw

    from sketchquant.core.report import print_table

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        sizes = [None if s == "config" else int(s) for s in args.build_input_sizes.split(",") if s]
        builds = [bench_build(tmp, args, size) for size in sizes]
        g = builds[0]["gallery"]
        for b in builds:
            b.pop("gallery")
        sketch = tmp / "sketch.png"
        im = Image.new("RGB", (256, 256), "white")
        ImageDraw.Draw(im).line([(40, 200), (128, 40), (216, 200), (40, 200)], fill="black", width=6)
        im.save(sketch)
        rows = []
        for n in [int(s) for s in args.sizes.split(",") if s]:
            rows += bench_query(g, n, [t for t in args.types.split(",") if t], sketch, args)
    print_table(
        "index build (images/s)",
        ["images", "input px", "batch", "build img/s", "forward img/s", "ratio"],
        [
            (
                b["images"],
                "×".join(map(str, b["input_size"])),
                b["batch_size"],
                b["build_images_per_s"],
                b["forward_images_per_s"],
                b["ratio"],
            )
            for b in builds
        ],
        digits=2,
    )
    print_table(
        "one-sketch query",
        [
            "size",
            "type",
            "query p50 ms",
            "query p99 ms",
            "search p50 ms",
            "search p99 ms",
            "recall@10",
            "bytes/photo",
        ],
        [
            (
                r["size"],
                r["type"],
                r.get("query_ms_p50"),
                r.get("query_ms_p99"),
                r.get("search_ms_p50"),
                r.get("search_ms_p99"),
                r.get("recall_at_10"),
                r.get("bytes_per_photo_total"),
            )
            for r in rows
        ],
        digits=2,
    )
    payload = {
        "args": {k: v for k, v in vars(args).items() if k != "out"},
        "torch_threads": torch.get_num_threads(),
        "build": builds,
        "query": rows,
    }
    write_results(args.out, meta, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
