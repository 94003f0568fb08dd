"""Training throughput: Lightning framework overhead and data-pipeline headroom, for both experiments.

    python benchmarks/train_throughput.py [--experiments zs_sbir quantization] [--batches 10] [--warmup 2]
        [--repeats 3] [--image-size 64] [--threads N] [--out benchmarks/results/train_throughput.json]
        [key=value ...]          # config overrides applied to both experiments, e.g. data.batch_size=32

For each experiment (default configs: ``compose("zs_sbir")`` / ``compose("quantization")``, the embedded
glyph benchmarks, ``tf_efficientnet_lite0`` with its offline ImageNet weights) it measures images/second of
training steps on the SAME pre-loaded batches (``data.batch_size`` images each, taken from the configured
train DataLoader; no data loading inside the timed window):

- ``bare_backbone``: a plain PyTorch loop (forward, cross-entropy, backward, Adam step, zero_grad) over the
  module's backbone as it trains (method B: the whole timm network to its pooled features; method A: the
  trunk pruned after the configured feature stage) + one linear classifier. The backbone with nothing on
  top.
- ``same_work``: a plain PyTorch loop doing exactly the module's computation without Lightning: method B =
  frozen-teacher forward on the photo rows + SketchNet (backbone, embedding, seen-class and ImageNet heads)
  + CE/KD/DA losses; method A = backbone trunk + per-window layers + classification + α·quantization loss.
  Same optimizer settings as ``configure_optimizers``.
- ``lightning``: the LightningModule (``ZeroShotSketchModule`` with its ``TeacherDistillation`` callback,
  ``QuantizationModule`` with ``AlphaRamp``) driven by ``pytorch_lightning.Trainer`` with
  ``limit_train_batches=warmup+batches``, no validation, no logger, no checkpointing, no progress bar, no
  model summary; timed from the start of the first measured batch to the end of the last one.

``overhead_pct`` (the ≤ 10 % target) = ``same_work / lightning - 1``: the framework's cost for identical
work. ``vs_bare_backbone_pct`` = ``bare_backbone / lightning - 1`` is reported too; for method B it is mostly
the teacher forward and the two heads (model work, not framework overhead).

``data_pipeline``: images/s of iterating the configured train DataLoader alone (its ``num_workers``,
sampler, decoding and augmentation), after ``warmup`` batches (worker start-up excluded);
``data_headroom`` = that / ``lightning`` images/s (target ≥ 2×: the loader is not the bottleneck).

Every timing is repeated ``--repeats`` times, interleaved (bare, same-work, lightning, data, bare, ...), and
the median is reported with the min–max spread: the machine may be shared and noisy. Results are printed as
a table and written atomically to ``--out`` with what every benchmark records (``benchmarks/common.py``:
commit, command, machine, load before and after).

A seconds-long smoke run of the script itself (timm's test network, 32 px, data in a temporary folder)::

    python benchmarks/train_throughput.py --experiments zs_sbir --batches 1 --warmup 0 --repeats 1 \
        --distinct-batches 1 --out /tmp/tt.json model.backbone=test_efficientnet model.weights=none \
        data.image_size=32 data.generator.image_size=32 data.batch_size=8 data.num_workers=0 data.root=/tmp/tt
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import torch  # noqa: E402
from common import started, write_results  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "train_throughput.json"
TARGET_OVERHEAD_PCT = 10.0
TARGET_HEADROOM = 2.0


# --------------------------------------------------------------------------------------------------------
# setup


def load_experiment(name: str, overrides: list[str], image_size: int | None):
    from sketchquant.app.build import build_datamodule, build_module
    from sketchquant.app.methods import compose

    extra = [f"data.image_size={image_size}"] if image_size else []
    cfg = compose(name, [*extra, *overrides])
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    module = build_module(cfg, dm)
    return cfg, dm, module


def preload_batches(dm, count: int) -> list[dict]:
    """``count`` distinct training batches from the configured train DataLoader (cycled if it is shorter)."""
    out: list[dict] = []
    while len(out) < count:
        loader = dm.train_dataloader()
        for batch in loader:
            out.append(batch)
            if len(out) == count:
                break
        if not out:
            raise RuntimeError("the train DataLoader yielded no batch")
    return out


def batch_images(batch: dict) -> int:
    return int(batch["image"].shape[0])


def _optimizer(params, module) -> torch.optim.Optimizer:
    """An optimizer of the module's settings (``model.optim``) over ``params``."""
    from sketchquant.lightning_modules.base import build_optimizer

    return build_optimizer([p for p in params if p.requires_grad], module.config.optim)


def _module_optimizer(module) -> torch.optim.Optimizer:
    """The optimizer ``configure_optimizers`` gives (its param groups and learning rates)."""
    opt = module.configure_optimizers()
    return opt["optimizer"] if isinstance(opt, dict) else opt


# --------------------------------------------------------------------------------------------------------
# the three training loops


class _BareBackbone(torch.nn.Module):
    """The module's backbone exactly as it trains (a copy) + global average pooling + one linear classifier.

    Method B: the whole timm network up to its pooled features (``SketchNet.backbone``). Method A: the trunk
    of ``QuantizationEncoder`` (timm network pruned after the configured feature stage, head removed)."""

    def __init__(self, module, num_classes: int):
        super().__init__()
        if hasattr(module, "net"):  # ZeroShotSketchModule
            self.trunk, self.pooled = copy.deepcopy(module.net.backbone), True
            width = int(module.net.num_features)
        else:  # QuantizationModule
            self.trunk, self.pooled = copy.deepcopy(module.encoder.trunk), False
            width = int(module.encoder.feature_channels)
        self.head = torch.nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.trunk(x)
        if not self.pooled:
            feats = feats.mean(dim=(2, 3))
        return self.head(feats)


def run_bare_backbone(cfg, module, batches: list[dict], warmup: int, n: int) -> float:
    """Plain loop: the same backbone + a linear classifier, cross-entropy (BCE if multi-label), Adam."""
    net = _BareBackbone(module, int(module.hparams.num_classes))
    net.train()
    opt = _optimizer(net.parameters(), module)
    multi = bool(getattr(module.hparams, "multi_label", False))
    loss_fn = torch.nn.BCEWithLogitsLoss() if multi else torch.nn.CrossEntropyLoss()

    def step(batch: dict) -> None:
        loss = loss_fn(net(batch["image"]), batch["label"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return _timed_loop(step, batches, warmup, n)


def run_same_work(cfg, module, batches: list[dict], warmup: int, n: int) -> float:
    """The module's own computation (``_common_step``) in a plain loop: no Trainer, no callbacks, no logging."""
    from sketchquant.core.batch import DOMAIN, IMAGE, PHOTO
    from sketchquant.core.hooks import Distillable, PenaltyWeighted

    mod = copy.deepcopy(module)
    mod.train()
    opt = _module_optimizer(mod)
    teacher = mod.distillation_teacher() if isinstance(mod, Distillable) else None
    if teacher is not None:
        teacher.eval()
    if isinstance(mod, PenaltyWeighted):  # what AlphaRamp does; the penalty is computed either way
        mod.set_penalty_weight(float(getattr(getattr(mod.config, "alpha", None), "final", 1.0)))

    def step(batch: dict) -> None:
        if teacher is not None:  # what TeacherDistillation does before every batch
            images, photo = batch[IMAGE], batch[DOMAIN] == PHOTO
            with torch.no_grad():
                logits = torch.zeros(images.shape[0], 1000)
                logits[photo] = teacher(images[photo]).float()
            mod.set_teacher_logits(logits)
        loss = mod._common_step(batch, "train")["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return _timed_loop(step, batches, warmup, n)


def _timed_loop(step, batches: list[dict], warmup: int, n: int) -> float:
    it = itertools.cycle(batches)
    for _ in range(warmup):
        step(next(it))
    images = 0
    t0 = time.perf_counter()
    for _ in range(n):
        batch = next(it)
        step(batch)
        images += batch_images(batch)
    return images / (time.perf_counter() - t0)


def _step_timer(warmup: int, n: int):
    """A Lightning callback recording wall time from the start of batch ``warmup`` to the end of the last one."""
    import pytorch_lightning as pl

    class StepTimer(pl.Callback):
        def __init__(self) -> None:
            self.t0: float | None = None
            self.t1: float | None = None
            self.images = 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx == warmup:
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if batch_idx >= warmup:
                self.images += batch_images(batch)
            if batch_idx == warmup + n - 1:
                self.t1 = time.perf_counter()

    return StepTimer()


def run_lightning(cfg, module, batches: list[dict], warmup: int, n: int) -> float:
    import pytorch_lightning as pl

    mod = copy.deepcopy(module)
    timer = _step_timer(warmup, n)
    from sketchquant.app.build import method_callbacks

    callbacks: list = [timer, *method_callbacks(cfg)]  # first: its batch start runs before the teacher's
    feed = [batches[i % len(batches)] for i in range(warmup + n)]
    loader = torch.utils.data.DataLoader(feed, batch_size=None, shuffle=False, num_workers=0)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        limit_train_batches=warmup + n,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=max(1, int(cfg.trainer.log_every_n_steps)),
        precision=cfg.trainer.precision if cfg.trainer.precision in ("32-true", "32") else "32-true",
        callbacks=callbacks,
        default_root_dir=tempfile.mkdtemp(prefix="sq-bench-"),
    )
    trainer.fit(mod, train_dataloaders=loader)
    if timer.t0 is None or timer.t1 is None:
        raise RuntimeError("the Trainer did not run the requested number of batches")
    return timer.images / (timer.t1 - timer.t0)


def run_data_pipeline(dm, warmup: int, n: int) -> float:
    """Images/s of the configured train DataLoader alone (a fresh loader: worker start-up is in warmup)."""

    def batches():
        while True:
            yield from dm.train_dataloader()

    it = batches()
    for _ in range(warmup):
        next(it)
    images = 0
    t0 = time.perf_counter()
    for _ in range(n):
        images += batch_images(next(it))
    return images / (time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------------------
# driver


def _stats(values: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": [round(v, 2) for v in values],
    }


def bench_experiment(name: str, args) -> dict[str, Any]:
    cfg, dm, module = load_experiment(name, args.overrides, args.image_size)
    batches = preload_batches(dm, min(args.batches + args.warmup, args.distinct_batches))
    runs: dict[str, list[float]] = {
        "bare_backbone": [],
        "same_work": [],
        "lightning": [],
        "data_pipeline": [],
    }
    data_batches = max(args.batches, 2 * int(cfg.data.num_workers or 0) + 2)
    for r in range(args.repeats):
        runs["bare_backbone"].append(run_bare_backbone(cfg, module, batches, args.warmup, args.batches))
        runs["same_work"].append(run_same_work(cfg, module, batches, args.warmup, args.batches))
        runs["lightning"].append(run_lightning(cfg, module, batches, args.warmup, args.batches))
        runs["data_pipeline"].append(run_data_pipeline(dm, max(args.warmup, 1), data_batches))
        print(
            f"  {name} repeat {r + 1}/{args.repeats}: "
            + ", ".join(f"{k} {v[-1]:.1f} img/s" for k, v in runs.items()),
            flush=True,
        )
    stats = {k: _stats(v) for k, v in runs.items()}
    med = {k: v["median"] for k, v in stats.items()}
    overhead = 100.0 * (med["same_work"] / med["lightning"] - 1.0)
    return {
        "experiment": name,
        "module": type(module).__name__,
        "backbone": cfg.model.backbone,
        "weights": cfg.model.weights,
        "image_size": int(cfg.data.image_size),
        "batch_size": int(cfg.data.batch_size),
        "num_workers": int(cfg.data.num_workers),
        "images_per_second": stats,
        "overhead_pct": overhead,
        "overhead_target_pct": TARGET_OVERHEAD_PCT,
        "overhead_ok": overhead <= TARGET_OVERHEAD_PCT,
        "vs_bare_backbone_pct": 100.0 * (med["bare_backbone"] / med["lightning"] - 1.0),
        "data_headroom": med["data_pipeline"] / med["lightning"],
        "data_headroom_target": TARGET_HEADROOM,
        "data_headroom_ok": med["data_pipeline"] / med["lightning"] >= TARGET_HEADROOM,
    }


def format_table(results: list[dict]) -> str:
    head = (
        f"{'experiment':13s} {'B':>3s} {'px':>3s} {'bare backbone':>14s} {'same work':>10s} "
        f"{'Lightning':>10s} {'overhead*':>10s} {'vs bare':>8s} {'data':>8s} {'headroom':>9s}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        m = {k: v["median"] for k, v in r["images_per_second"].items()}
        lines.append(
            f"{r['experiment']:13s} {r['batch_size']:3d} {r['image_size']:3d} {m['bare_backbone']:14.1f} "
            f"{m['same_work']:10.1f} {m['lightning']:10.1f} {r['overhead_pct']:+9.1f}% "
            f"{r['vs_bare_backbone_pct']:+7.1f}% {m['data_pipeline']:8.1f} {r['data_headroom']:8.2f}x"
        )
    lines.append(
        "images/s, medians of the repeats. *overhead = same work (plain loop) / Lightning - 1: "
        f"target <= {TARGET_OVERHEAD_PCT:.0f}%."
    )
    lines.append(
        "vs bare = same backbone + linear classifier loop / Lightning - 1 (includes the method's extra model "
        "work: teacher forward, heads, losses). headroom = data pipeline / Lightning "
        f"(target >= {TARGET_HEADROOM:.0f}x)."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiments", nargs="+", default=["zs_sbir", "quantization"])
    p.add_argument("--batches", type=int, default=10, help="timed training steps per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before each measurement")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats; medians are reported")
    p.add_argument("--image-size", type=int, default=None, help="data.image_size (default: the config's)")
    p.add_argument("--distinct-batches", type=int, default=6, help="distinct pre-loaded batches, cycled")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every experiment")
    args = p.parse_args(argv)
    meta = started(None if argv is None else [sys.argv[0], *argv])
    if args.batches < 1 or args.warmup < 0 or args.repeats < 1:
        p.error("--batches and --repeats must be >= 1, --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import logging

    import pytorch_lightning  # noqa: F401 - sets its loggers' levels on import; quiet them afterwards

    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    results = []
    for name in args.experiments:
        print(
            f"{name}: {args.repeats} repeats × ({args.warmup} warm-up + {args.batches} timed) steps",
            flush=True,
        )
        results.append(bench_experiment(name, args))
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    table = format_table(results)
    print()
    print(table)
    payload = {
        "settings": {
            "batches": args.batches,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "image_size": args.image_size,
            "distinct_batches": args.distinct_batches,
            "overrides": args.overrides,
        },
        "environment": {
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(),
            "load_average_1_5_15_before": load,
            "load_average_1_5_15_after": load_after,
        },
        "definitions": {
            "overhead_pct": "100 * (same_work / lightning - 1); target <= 10",
            "vs_bare_backbone_pct": "100 * (bare_backbone / lightning - 1); includes the method's model work",
            "data_headroom": "data_pipeline / lightning images/s; target >= 2",
        },
        "results": results,
        "table": table.splitlines(),
    }
    write_results(args.out, meta, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
