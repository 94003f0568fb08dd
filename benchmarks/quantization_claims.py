"""Method A's two claims, measured on the embedded multi-label glyph mosaics (docs/method.md §A).

1. integer iReLU codes keep *how strongly* a part responds, which a sign hash throws away:
   float features vs 8-bit / 4-bit codes vs a sign hash of the same continuous features, at equal dims
   (the sign hash is then 8× smaller) and at equal bytes (a sign hash of 8× more dims, or codes of 8×
   fewer dims);
2. overlapping sliding windows keep objects whole where stripes cut them: sliding windows vs PCB stripes vs
   global pooling at the same bytes per image and at their natural sizes.

Protocol (``--mode frozen``, the default, minutes on 2 CPU cores): the ImageNet ``tf_efficientnet_lite0``
backbone is frozen and its feature map (stage ``--feature-stage`` at ``--image-size`` px) is computed once
for every image; each variant's head (window pooling → per-window FC + ReLU → iReLU, shared classifier,
``L = L_cls + α(t)·L_q`` with the linear α ramp) is then trained on the cached maps with its own seed.
``--mode finetune`` trains every variant end to end through ``sketchquant train quantization`` instead
(the real pipeline; about as long as the default experiment per variant and seed).

Retrieval: the ``hashing`` protocol (relevant = shares a label), queries = the query split, gallery = the
whole database. The embedded database has 1,000 images, so mAP@all is reported (identical to mAP@1000
here; DeepHash's NUS-WIDE cut-off of 5,000 would exceed it). Ranking: squared L2 for floats and codes,
Hamming (= squared L2 of 0/1 bits) for the sign hash. Sign hash **[decision]**: bit = ``v > median_j``,
the per-dimension median of the continuous features over the *training* split (``v`` is post-ReLU, so
``sign(v)`` alone would be mostly ``v > 0``).

Bytes per image: ``bits·P·d / 8`` (bit-packed; 8-bit codes: ``P·d``; the uint8 index stores 4-bit codes
in one byte each, noted in the table), floats ``4·P·d``.

Run: ``python benchmarks/quantization_claims.py --seeds 0 1 2`` (or ``--quick``: one seed, fewer epochs;
``--quick --epochs 1 --data /tmp/m --out /tmp/qc.json`` checks the script). Writes
``benchmarks/results/quantization_claims.json`` (with what every benchmark records: commit, command,
machine, load before and after; ``benchmarks/common.py``) and ``.png``, and prints a table.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import started, write_results  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


@dataclass
class Variant:
    """One trained head. ``window``/``kernel``/``stride``/``num_stripes``/``dim``/``bits`` as in the model."""

    name: str
    window: str = "sliding"
    kernel: tuple[int, int] = (3, 3)
    stride: tuple[int, int] = (1, 1)
    num_stripes: int = 4
    dim: int = 48
    bits: int = 8


@dataclass
class Row:
    name: str
    variant: str
    kind: str  # float | codes | sign | gap
    claim: str
    bytes: float
    note: str = ""
    scores: list[float] = field(default_factory=list)


def variants(dim: int) -> list[Variant]:
    small = max(1, dim // 8)
    return [
        Variant("sliding", dim=dim),
        Variant("sliding_4bit", dim=dim, bits=4),
        Variant("sliding_8xdim", dim=dim * 8),
        Variant("sliding_dim/8", dim=small),
        Variant("grid_no_overlap", kernel=(2, 2), stride=(2, 2), dim=dim),
        Variant("stripes", window="stripes", dim=dim),
        Variant("global_same_bytes", window="global", dim=dim * 4),
        Variant("global_natural", window="global", dim=dim),
    ]


# --------------------------------------------------------------------------------------------------
# data and cached backbone maps


def load_data(data_config: str, root: str | None, image_size: int):
    """The ImageDataModule of ``configs/data/<data_config>.yaml`` (generator settings included, so the
    data are the experiment's), with ``root`` / ``image_size`` overridden."""
    from omegaconf import OmegaConf

    from sketchquant.datamodules import ImageDataModule
    from sketchquant.datamodules.transforms import resolve_data_config

    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "data" / f"{data_config}.yaml"))
    cfg.pop("kind", None)
    if root:
        cfg["root"] = root
    if not os.path.isabs(cfg["root"]):
        cfg["root"] = str(ROOT / cfg["root"])
    dcfg = resolve_data_config("tf_efficientnet_lite0")
    cfg.update(image_size=image_size, mean=dcfg["mean"], std=dcfg["std"], num_workers=0, batch_size=64)
    dm = ImageDataModule(**cfg)
    dm.prepare_data()
    dm.setup("fit")
    return dm


@torch.no_grad()
def backbone_maps(dm, image_size: int, feature_stage: int) -> dict[str, torch.Tensor]:
    from sketchquant.lightning_modules.components.backbones import create_backbone
    from sketchquant.lightning_modules.components.quant_encoder import make_trunk

    trunk_model = create_backbone("tf_efficientnet_lite0", weights="efficientnet_lite0", num_classes=None)
    trunk = make_trunk(
        trunk_model, feature_stage, torch.zeros(1, 3, image_size, image_size), prune=True
    ).eval()
    out = {}
    for split in ("train", "query", "database"):
        ds = dm.eval_dataset(split)
        maps = []
        for a in range(0, len(ds), 128):
            x = torch.stack([ds[i]["image"] for i in range(a, min(a + 128, len(ds)))])
            maps.append(trunk(x))
        out[split] = torch.cat(maps)
        out[split + "_labels"] = ds.labels_tensor()
    return out


# --------------------------------------------------------------------------------------------------
# heads on cached maps


def train_head(v: Variant, maps: dict, seed: int, epochs: int, lr: float, alpha: dict, batch: int = 64):
    """Train one head on the cached training maps; returns (continuous features per split, encoder)."""
    from torch import nn

    from sketchquant.callbacks.alpha_ramp import alpha_schedule
    from sketchquant.lightning_modules.components.irelu import quantization_loss
    from sketchquant.lightning_modules.components.quant_encoder import (
        QuantizationEncoder,
        classification_loss,
    )

    torch.manual_seed(seed)
    x, y = maps["train"], maps["train_labels"]
    enc = QuantizationEncoder(
        num_classes=y.shape[1],
        backbone_module=nn.Identity(),
        window=v.window,
        kernel=v.kernel,
        stride=v.stride,
        num_stripes=v.num_stripes,
        dim=v.dim,
        bits=v.bits,
        image_size=tuple(x.shape[-2:]),
        in_chans=x.shape[1],
    )
    opt = torch.optim.Adam(enc.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=lr * 0.01)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        a = alpha_schedule(epoch, alpha_final=alpha["final"], t1=alpha["t1"], t2=alpha["t2"])
        order = torch.randperm(len(x), generator=g)
        enc.train()
        for s in range(0, len(x) - batch + 1, batch):
            idx = order[s : s + batch]
            xb = x[idx]
            if torch.rand(1, generator=g).item() < 0.5:  # horizontal flip of the feature map
                xb = xb.flip(-1)
            out = enc(xb)
            loss = classification_loss(out.logits, y[idx], True) + a * quantization_loss(
                out.continuous, v.bits
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    enc.eval()
    with torch.no_grad():
        feats = {s: enc.continuous(maps[s]).flatten(1) for s in ("train", "query", "database")}
    return feats, enc


def score(q, ql, g, gl) -> float:
    from sketchquant.core.retrieval.metrics import hashing_metrics

    return float(hashing_metrics(q.float(), ql, g.float(), gl, map_at=("all",))["map_all"])


def chance_map(ql: torch.Tensor, gl: torch.Tensor) -> float:
    """mAP of a random ranking: the mean over queries of the share of relevant database items."""
    rel = (ql.float() @ gl.float().T > 0) if ql.dim() == 2 else (ql[:, None] == gl[None, :])
    return float(rel.float().mean(1).mean())


def codes_of(f: torch.Tensor, bits: int) -> torch.Tensor:
    from sketchquant.lightning_modules.components.irelu import to_codes

    return to_codes(f, bits).float()


def sign_hash(f: dict) -> dict:
    med = f["train"].median(0).values
    return {s: (f[s] > med).float() for s in ("query", "database")}


# --------------------------------------------------------------------------------------------------
# finetune mode: the real training pipeline per variant


def finetune_features(v: Variant, seed: int, epochs: int, extra: list[str], workdir: Path) -> dict:
    from sketchquant.app.build import build_datamodule
    from sketchquant.app.export import load_quantization_model
    from sketchquant.app.methods import compose
    from sketchquant.app.train import train

    ov = [
        f"model.window={v.window}",
        f"model.kernel=[{v.kernel[0]},{v.kernel[1]}]",
        f"model.stride=[{v.stride[0]},{v.stride[1]}]",
        f"model.num_stripes={v.num_stripes}",
        f"model.dim={v.dim}",
        f"model.bits={v.bits}",
        f"seed={seed}",
        f"run_dir={workdir}",
        f"name={v.name.replace('/', '_')}-s{seed}",
        "trainer.enable_progress_bar=false",
        "eval.grid=false",
    ]
    if epochs:
        ov.append(f"trainer.max_epochs={epochs}")
    cfg = compose("quantization", ov + list(extra))
    res = train(cfg)
    ckpt = Path(res["run_dir"]) / "checkpoints" / "last.ckpt"
    cfg, encoder, _ = load_quantization_model(ckpt)  # the trained QuantizationEncoder
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("test")
    feats = {}
    for split in ("train", "query", "database"):
        ds = dm.eval_dataset(split)
        loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=False)
        with torch.no_grad():
            parts = [(encoder.float_features(b["image"]), b["label"]) for b in loader]
        feats[split] = torch.cat([p[0] for p in parts])
        feats[split + "_labels"] = torch.cat([p[1] for p in parts])
    return feats


# --------------------------------------------------------------------------------------------------


def build_rows(dim: int, P: int) -> dict[str, Row]:
    pd = P * dim
    small = max(1, dim // 8)
    return {
        r.name: r
        for r in [
            Row("float (sliding)", "sliding", "float", "codes", 4 * pd, f"{P}×{dim} float32"),
            Row("iReLU 8-bit codes (sliding)", "sliding", "codes8", "codes", pd, f"{P}×{dim} uint8"),
            Row(
                "iReLU 4-bit codes (bits=4 model)",
                "sliding_4bit",
                "codes4",
                "codes",
                pd / 2,
                f"{P}×{dim}×4 bit packed ({pd} B as uint8)",
            ),
            Row(
                "sign hash, same dims",
                "sliding",
                "sign",
                "codes",
                pd / 8,
                f"{pd} bits of the 8-bit model's v",
            ),
            Row(
                "sign hash, 8x dims (= bytes of 8-bit codes)",
                "sliding_8xdim",
                "sign",
                "codes",
                pd,
                f"{8 * pd} bits",
            ),
            Row(
                "iReLU 8-bit codes, dim/8 (= bytes of sign hash)",
                "sliding_dim/8",
                "codes8",
                "codes",
                P * small,
                f"{P}×{small} uint8",
            ),
            Row(
                "sliding windows codes (kernel 3, stride 1)",
                "sliding",
                "codes8",
                "windows",
                pd,
                f"P={P} overlapping",
            ),
            Row("non-overlapping 2x2 grid codes", "grid_no_overlap", "codes8", "windows", pd, f"P=4×{dim}"),
            Row("stripes codes", "stripes", "codes8", "windows", pd, f"4 stripes×{dim}"),
            Row("global codes, same bytes", "global_same_bytes", "codes8", "windows", pd, f"1×{4 * dim}"),
            Row("global codes, natural size", "global_natural", "codes8", "windows", dim, f"1×{dim}"),
            Row("stripes float", "stripes", "float", "windows", 4 * pd, f"4×{dim} float32"),
            Row(
                "global float, natural size",
                "global_natural",
                "float",
                "windows",
                4 * dim,
                f"1×{dim} float32",
            ),
        ]
    }


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = {"float": "s", "codes8": "o", "codes4": "v", "sign": "x", "gap": "D"}
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for r in rows:
        ax.errorbar(
            r["bytes"],
            r["mean"],
            yerr=r["std"],
            fmt=markers.get(r["kind"], "o"),
            capsize=3,
            label=f"{r['name']} ({r['bytes']:g} B)",
        )
    ax.set_xscale("log")
    ax.set_xlabel("bytes per image (log)")
    ax.set_ylabel("mAP@all (hashing protocol)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6.5, loc="lower right")
    fig.tight_layout()
    from sketchquant.core.io import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=130, format="png"), suffix=".png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="head epochs (frozen, default 40) or max_epochs (finetune, default: the experiment's)",
    )
    p.add_argument("--quick", action="store_true", help="smoke mode: one seed, fewer epochs")
    p.add_argument("--mode", choices=("frozen", "finetune"), default="frozen")
    p.add_argument(
        "--data-config", default="glyph_mosaics", help="configs/data/<name>.yaml (method A's default data)"
    )
    p.add_argument("--data", default=None, help="data root (default: the data config's)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--feature-stage", type=int, default=-2)
    p.add_argument("--dim", type=int, default=48)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--alpha", type=float, default=0.1, help="α_f (ramp from 0 at t1 to α_f at t2)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS / "quantization_claims.json"))
    p.add_argument("extra", nargs="*", metavar="key=value", help="finetune mode: overrides for every run")
    args = p.parse_args(argv)
    record = started(None if argv is None else [sys.argv[0], *argv])
    torch.set_num_threads(args.threads)
    seeds = args.seeds[:1] if args.quick else args.seeds
    epochs = args.epochs or (15 if args.quick else 40) if args.mode == "frozen" else args.epochs
    alpha = {"final": args.alpha, "t1": 0.25 * (epochs or 4), "t2": 0.6 * (epochs or 4)}
    t0 = time.time()
    vlist = variants(args.dim)

    # P and the reference GAP features come from the cached maps (also used in finetune mode for P)
    dm = load_data(args.data_config, args.data, args.image_size)
    maps = backbone_maps(dm, args.image_size, args.feature_stage) if args.mode == "frozen" else None
    t_maps = time.time() - t0
    from sketchquant.lightning_modules.components.windows import WindowPooling

    if maps is not None:
        hw = tuple(maps["train"].shape[-2:])
    else:
        hw = (
            (args.image_size // 16, args.image_size // 16)
            if args.feature_stage == -2
            else (args.image_size // 32, args.image_size // 32)
        )
    P = WindowPooling("sliding", kernel=(3, 3), stride=(1, 1)).num_windows(hw)
    rows = build_rows(args.dim, P)
    gap = Row(
        "ImageNet backbone GAP float (no training)",
        "-",
        "gap",
        "reference",
        4 * (maps["train"].shape[1] if maps is not None else 0),
        "frozen-mode reference",
    )
    work = Path(tempfile.mkdtemp(prefix="qclaims-"))
    for seed in seeds:
        for v in vlist:
            ts = time.time()
            if maps is not None:
                feats, _ = train_head(v, maps, seed, epochs, args.lr, alpha)
                labels = {s: maps[s + "_labels"] for s in ("train", "query", "database")}
            else:
                got = finetune_features(v, seed, epochs, args.extra, work)
                feats = {s: got[s] for s in ("train", "query", "database")}
                labels = {s: got[s + "_labels"] for s in ("train", "query", "database")}
            ql, gl = labels["query"], labels["database"]
            sign = None
            for row in rows.values():
                if row.variant != v.name:
                    continue
                if row.kind == "float":
                    s = score(feats["query"], ql, feats["database"], gl)
                elif row.kind in ("codes8", "codes4"):
                    s = score(codes_of(feats["query"], v.bits), ql, codes_of(feats["database"], v.bits), gl)
                else:
                    sign = sign or sign_hash(feats)
                    s = score(sign["query"], ql, sign["database"], gl)
                row.scores.append(s)
            frac0 = float((codes_of(feats["database"], v.bits) == 0).float().mean())
            print(
                f"seed {seed} {v.name:18s} {time.time() - ts:6.1f}s  zero codes {frac0:.2f}  "
                + "  ".join(
                    f"{r.name.split(' (')[0]}={r.scores[-1]:.3f}"
                    for r in rows.values()
                    if r.variant == v.name
                ),
                flush=True,
            )
        if maps is not None and not gap.scores:
            g = {s: maps[s].mean((-2, -1)) for s in ("query", "database")}
            gap.scores.append(score(g["query"], maps["query_labels"], g["database"], maps["database_labels"]))
    all_rows = list(rows.values()) + ([gap] if gap.scores else [])
    table = []
    for r in all_rows:
        a = np.asarray(r.scores)
        table.append(
            {
                **{k: v for k, v in asdict(r).items() if k != "scores"},
                "per_seed": r.scores,
                "mean": float(a.mean()),
                "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
            }
        )
    elapsed = time.time() - t0
    meta = {
        "mode": args.mode,
        "seeds": seeds,
        "epochs": epochs,
        "image_size": args.image_size,
        "feature_stage": args.feature_stage,
        "feature_map": list(hw),
        "windows_sliding": P,
        "dim": args.dim,
        "lr": args.lr,
        "alpha": alpha,
        "backbone": "tf_efficientnet_lite0 (ImageNet, efficientnet_lite0 file)",
        "data": str(dm.root),
        "data_config": args.data_config,
        "num_val_held_out": len(dm.eval_dataset("val")),
        "chance_map_all": chance_map(
            dm.eval_dataset("query").labels_tensor(), dm.eval_dataset("database").labels_tensor()
        ),
        "num_query": len(dm.eval_dataset("query")),
        "num_database": len(dm.eval_dataset("database")),
        "num_train": len(dm.eval_dataset("train")),
        "protocol": "hashing, mAP@all over the whole database (= mAP@1000 for 1000 database images)",
        "sign_hash": "bit = v > per-dimension median of the training split's continuous features; Hamming",
        "bytes": "bit-packed bytes per image: bits·P·d/8; float32: 4·P·d",
        "seconds": round(elapsed, 1),
        "seconds_backbone_maps": round(t_maps, 1),
        "quick": args.quick,
    }
    out = Path(args.out)
    write_results(out, record, {"meta": meta, "rows": table})
    title = (
        f"{args.data_config}, {args.mode} lite0 stage {args.feature_stage} @{args.image_size}px, "
        f"{len(seeds)} seed(s), mAP@all"
    )
    plot(table, out.with_suffix(".png"), title)
    w = max(len(r["name"]) for r in table)
    print(f"\n{'claim':9s} {'features':{w}s} {'bytes':>7s}  {'mAP@all':>15s}  note")
    for r in table:
        pm = f"{r['mean']:.3f} ± {r['std']:.3f}" if len(seeds) > 1 else f"{r['mean']:.3f}"
        print(f"{r['claim']:9s} {r['name']:{w}s} {r['bytes']:7g}  {pm:>15s}  {r['note']}")
    print(f"chance (random ranking) mAP@all {meta['chance_map_all']:.3f}")
    print(f"\n{len(seeds)} seed(s), {elapsed:.0f} s; wrote {out} and {out.with_suffix('.png')}")
    if not math.isfinite(elapsed):  # pragma: no cover
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
