"""What ``make train`` gives, over seeds: ``sketchquant train zs_sbir`` once per seed, mean ± std.

    python benchmarks/make_train.py [--seeds 0 1 2] [--experiment zs_sbir] [--work DIR] [--no-untrained]
        [--out benchmarks/results/make_train.json] [key=value ...]

The data are generated once, first (in this process, through the experiment's DataModule, so they are
exactly what training would generate); then each seed trains and tests in its own subprocess, as a
user runs it (``sketchquant train EXPERIMENT key=value ... seed=N run_dir=WORK/seedN``), its output in
``WORK/seedN.log``. Then, for reference, the same network before training: one more run with
``trainer.max_epochs=0`` (the ImageNet-initialised network tested as it is; the first seed; skipped with
``--no-untrained``). ``key=value`` overrides go to every run. The run folders stay under ``--work``
(default ``runs/make_train/<time>``).

The results file holds, besides what every benchmark records (``benchmarks/common.py``: commit, command,
machine, load before and after):

- ``runs``: one object per seed: ``seed``, ``seconds`` (the subprocess's wall time: training, testing
  and start-up), ``run_dir``, and every logged test metric (``test/fused/map_all`` …) with the best
  validation value of the monitor (``val/map_all``), as ``results.json`` holds them;
- ``mean`` and ``std`` (sample standard deviation; 0 for one run), keyed by the logged names, over the runs;
- ``untrained``: the run before training, as one object of ``runs`` (absent with ``--no-untrained``);
- ``data``: its folder and the seconds ``prepare_data`` took (about 0 when the data were there already);
- ``settings``: the experiment's evaluation settings that label the figures (prototypes, fusion, epochs).

A seconds-long check of the script (timm's test network, 32 px, one training epoch of two batches)::

    python benchmarks/make_train.py --seeds 0 1 --out /tmp/mt.json --work /tmp/mt data.root=/tmp/mt/glyphs \\
        model.backbone=test_efficientnet model.weights=none model.embed_dim=32 data.image_size=32 \\
        data.generator.image_size=32 data.generator.num_classes=8 data.generator.num_unseen=3 \\
        data.generator.photos_per_class=7 data.generator.sketches_per_class=7 data.batch_size=12 \\
        data.num_workers=0 eval.pq_k=4 eval.grid=false trainer.max_epochs=1 trainer.limit_train_batches=2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import RESULTS, started, write_results  # noqa: E402

BIN = Path(sys.executable).parent
#: the settings that label the figures (read from the first run's resolved config.yaml)
SETTINGS = (
    "trainer.max_epochs",
    "data.image_size",
    "model.backbone",
    "eval.pq_m",
    "eval.pq_k",
    "eval.fusion",
    "eval.fusion_lambda",
    "monitor",
)


def generate_data(experiment: str, overrides: list[str]) -> dict[str, Any]:
    """The experiment's data, generated once (a no-op when they are there already)."""
    from sketchquant.app.build import build_datamodule
    from sketchquant.app.methods import compose

    cfg = compose(experiment, overrides)
    t0 = time.perf_counter()
    build_datamodule(cfg).prepare_data()
    return {"root": str(cfg.data.root), "seconds": round(time.perf_counter() - t0, 1)}


def run_seed(experiment: str, seed: int, overrides: list[str], work: Path, name: str = "") -> dict[str, Any]:
    """One ``sketchquant train`` subprocess (in ``WORK/<name or seedN>``); its logged test metrics, best
    validation value and seconds."""
    name = name or f"seed{seed}"
    run_dir = work / name
    log = work / f"{name}.log"
    argv = [str(BIN / "sketchquant"), "train", experiment, *overrides, f"seed={seed}", f"run_dir={run_dir}"]
    env = {k: v for k, v in os.environ.items() if k != "SKETCHQUANT_RUN_DIR"}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("WANDB_MODE", "offline")
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"seed {seed}: `{' '.join(argv)}` exited with {proc.returncode}; see {log}")
    found = sorted(run_dir.glob(f"{experiment}/*/results.json"))
    if len(found) != 1:
        raise SystemExit(f"seed {seed}: expected one results.json under {run_dir}, found {len(found)}")
    results = json.loads(found[0].read_text())
    return {
        "seed": seed,
        "seconds": round(seconds, 1),
        "run_dir": str(found[0].parent),
        **results.get("val", {}),
        **results["metrics"],
    }


def settings_of(run_folder: str) -> dict[str, Any]:
    import yaml

    cfg = yaml.safe_load((Path(run_folder) / "config.yaml").read_text())
    out = {}
    for key in SETTINGS:
        value: Any = cfg
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        out[key] = value
    return out


def aggregate(runs: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """``mean`` and ``std`` of every logged name that every run has."""
    names = [k for k in runs[0] if "/" in k and all(k in r for r in runs)]
    mean = {k: statistics.fmean(r[k] for r in runs) for k in names}
    std = {k: statistics.stdev([r[k] for r in runs]) if len(runs) > 1 else 0.0 for k in names}
    return mean, std


def figures(args: argparse.Namespace, data: dict, runs: list[dict], mean: dict, std: dict) -> dict:
    """The results file's own part (see the module's docstring)."""
    return {
        "experiment": args.experiment,
        "seeds": args.seeds,
        "overrides": args.overrides,
        "settings": settings_of(runs[0]["run_dir"]),
        "data": data,
        "runs": runs,
        "mean": mean,
        "std": std,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--experiment", default="zs_sbir", help="default: the default experiment (make train)")
    p.add_argument("--work", type=Path, default=None, help="run folders (default runs/make_train/<time>)")
    p.add_argument("--out", type=Path, default=RESULTS / "make_train.json")
    p.add_argument(
        "--no-untrained",
        dest="untrained",
        action="store_false",
        help="skip the reference run before training (trainer.max_epochs=0)",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    args = p.parse_args(argv)
    meta = started(None if argv is None else [sys.argv[0], *argv])
    work = (args.work or ROOT / "runs" / "make_train" / time.strftime("%Y%m%d-%H%M%S")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = generate_data(args.experiment, args.overrides)
    print(f"data: {data['root']} ({data['seconds']} s)", flush=True)
    runs = []
    for seed in args.seeds:
        run = run_seed(args.experiment, seed, args.overrides, work)
        runs.append(run)
        shown = ", ".join(f"{k} {run[k]:.3f}" for k in ("test/map_all", "test/fused/map_all") if k in run)
        print(f"seed {seed}: {run['seconds']:.0f} s, {shown}", flush=True)
    untrained = None
    if args.untrained:
        untrained = run_seed(
            args.experiment, args.seeds[0], [*args.overrides, "trainer.max_epochs=0"], work, "untrained"
        )
        shown = ", ".join(f"{k} {untrained[k]:.3f}" for k in ("test/map_all",) if k in untrained)
        print(f"before training: {untrained['seconds']:.0f} s, {shown}", flush=True)
    mean, std = aggregate(runs)
    for key in sorted(k for k in mean if k.endswith(("/map_all", "/p_100"))):
        print(f"{key:28s} {mean[key]:.3f} ± {std[key]:.3f}")
    extra = {"untrained": untrained} if untrained else {}
    write_results(args.out, meta, dict(figures(args, data, runs, mean, std), **extra))
    return 0


if __name__ == "__main__":
    sys.exit(main())
