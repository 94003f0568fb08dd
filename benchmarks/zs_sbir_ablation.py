"""Method B ablation on the embedded glyph benchmark: which losses help unseen-class retrieval?

Rows (each over ``--seeds``, mean ± std, test = UNSEEN classes):
  floor   the ImageNet-initialised network before any training (trainer.max_epochs=0)
  ce      L_cls only                      (lambda_kd=0, lambda_da=0)
  ce+kd   + distillation                  (lambda_da=0)
  ce+da   + distribution alignment        (lambda_kd=0)
  ce+kd+da  the full method (defaults)
each with raw / prototype (PQ M×K) / fused gallery features, plus an M × K grid of prototypes on the
full method's checkpoint (seed of the first run). Checkpoints are chosen on held-out SEEN classes.

    python benchmarks/zs_sbir_ablation.py --seeds 0 1 2            # full (about 20 × one default run)
    python benchmarks/zs_sbir_ablation.py --quick                  # 1 seed, 1 epoch, smoke
Writes benchmarks/results/zs_sbir_ablation.json (atomic; with what every benchmark records: commit,
command, machine, load before and after, ``benchmarks/common.py``) and prints a markdown table.
A seconds-long check of the script: ``--quick --out /tmp/a.json --run-dir /tmp/a`` plus the tiny-run
overrides of ``tests/conftest.py`` (``model.backbone=test_efficientnet model.weights=none ...``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import started, write_results  # noqa: E402

from sketchquant.app.methods import compose  # noqa: E402
from sketchquant.app.train import evaluate, train  # noqa: E402

VARIANTS = {
    "floor": ["trainer.max_epochs=0"],
    "ce": ["model.lambda_kd=0", "model.lambda_da=0"],
    "ce+kd": ["model.lambda_da=0"],
    "ce+da": ["model.lambda_kd=0"],
    "ce+kd+da": [],
}
FEATURES = (("raw", "test/"), ("proto", "test/proto/"), ("fused", "test/fused/"))
METRICS = ("map_all", "p_100")


def _run(variant: str, seed: int, args, run_dir: Path) -> dict:
    overrides = [
        f"seed={seed}",
        f"run_dir={run_dir}",
        f"name={variant}-s{seed}",
        "eval.grid=false",
        *args.overrides,
    ]
    if args.epochs is not None and variant != "floor":
        overrides.append(f"trainer.max_epochs={args.epochs}")
    overrides += VARIANTS[variant]
    os.environ.pop("SKETCHQUANT_RUN_DIR", None)
    start = time.perf_counter()
    out = train(compose("zs_sbir", overrides))
    out["seconds"] = time.perf_counter() - start
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None, help="default: the experiment's max_epochs")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--grid-m", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--grid-k", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--quick", action="store_true", help="1 seed, 1 epoch, small grid")
    p.add_argument("--run-dir", default="runs/ablation")
    p.add_argument("--out", default="benchmarks/results/zs_sbir_ablation.json")
    p.add_argument(
        "--collect",
        default=None,
        metavar="DIR",
        help="only aggregate the finished runs under DIR (an earlier, possibly interrupted, ablation)",
    )
    p.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. trainer.max_epochs=4")
    args = p.parse_args(argv)
    meta = started(None if argv is None else [sys.argv[0], *argv])
    if args.quick:
        args.seeds, args.epochs, args.grid_m, args.grid_k = [0], 1, [2], [16, 32]
    run_dir = Path(args.collect or Path(args.run_dir) / time.strftime("%Y%m%d-%H%M%S"))

    runs: dict[str, list[dict]] = {v: [] for v in args.variants}
    if args.collect:
        for res_file in sorted(run_dir.glob("zs_sbir/*/results.json")):
            variant, _, seed = res_file.parent.name.split("-", 2)[-1].rpartition("-s")
            if variant in runs:
                res = json.loads(res_file.read_text())
                runs[variant].append(
                    {
                        "seed": int(seed),
                        "run_dir": str(res_file.parent),
                        "seconds": None,
                        "metrics": res["metrics"],
                    }
                )
        args.seeds = sorted({r["seed"] for items in runs.values() for r in items}) or args.seeds
        runs = {v: items for v, items in runs.items() if items}
    for seed in [] if args.collect else args.seeds:
        for variant in args.variants:
            res = _run(variant, seed, args, run_dir)
            runs[variant].append(
                {"seed": seed, "run_dir": res["run_dir"], "seconds": res["seconds"], "metrics": res["test"]}
            )
            print(
                f"[{variant} seed {seed}] {res['seconds']:.0f}s map_all={res['test'].get('test/map_all', 0):.4f}",
                flush=True,
            )

    table = {}
    for variant, items in runs.items():
        row = {}
        for feat, prefix in FEATURES:
            for metric in METRICS:
                vals = [it["metrics"].get(prefix + metric) for it in items]
                vals = [v for v in vals if v is not None]
                if vals:
                    row[f"{feat}/{metric}"] = _mean_std(vals)
        table[variant] = row
    chance = [it["metrics"].get("test/chance_map_all") for items in runs.values() for it in items]
    chance = next((c for c in chance if c is not None), None)

    grid = []
    full = runs.get("ce+kd+da") or next(iter(runs.values()))
    ckpt = Path(full[0]["run_dir"]) / "checkpoints" / "last.ckpt"
    if ckpt.exists():
        for m in args.grid_m:
            for k in args.grid_k:
                res = evaluate(str(ckpt), [f"eval.pq_m={m}", f"eval.pq_k={k}", "eval.grid=false"])["test"]
                grid.append(
                    {
                        "m": m,
                        "k": k,
                        "proto/map_all": res.get("test/proto/map_all"),
                        "fused/map_all": res.get("test/fused/map_all"),
                        "raw/map_all": res.get("test/map_all"),
                    }
                )

    payload = {
        "seeds": args.seeds,
        "epochs": args.epochs,
        "overrides": args.overrides,
        "chance_map_all": chance,
        "table": {v: {k: list(s) for k, s in row.items()} for v, row in table.items()},
        "grid": grid,
        "runs": runs,
    }
    out = Path(args.out)
    write_results(out, meta, payload)

    cols = [f"{f}/{m}" for f, _ in FEATURES for m in METRICS]
    print(
        f"\nZS-SBIR ablation, unseen classes, seeds {args.seeds} (mean ± std); chance mAP@all ≈ {chance:.3f}"
        if chance is not None
        else ""
    )
    print("| variant | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for variant, row in table.items():
        cells = [f"{row[c][0]:.3f} ± {row[c][1]:.3f}" if c in row else "" for c in cols]
        print(f"| {variant} | " + " | ".join(cells) + " |")
    if grid:
        print(f"\nprototypes on the full method (seed {args.seeds[0]}): M × K → proto / fused mAP@all")
        print("| M | K | proto | fused |\n|---|---|---|---|")
        for g in grid:
            print(f"| {g['m']} | {g['k']} | {g['proto/map_all']:.3f} | {g['fused/map_all']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
