"""How long a command takes from the shell, as a ratio to ``python -c "import torch"`` timed in the same run.

    python benchmarks/cli_start.py [--repeats 5] [--quickdraw] [--out benchmarks/results/cli_start.json]

Each command runs as a user runs it (the installed ``sketchquant`` script, from a temporary working
directory), ``--repeats`` times; the table gives the median wall time and its ratio to the median of
``python -c "import torch"``. Goals: ``config`` / ``list`` ≤ 0.7× (they need no torch at all),
``eval-features`` on a 10 × 10 pair ≤ 1.6×, ``search`` of one sketch on a 100-photo gallery ≤ 2.5×.

``--quickdraw`` adds ``sketchquant eval-features`` at QuickDraw scale (92,291 × 54,151 × 512, SBIR,
mAP@all and P@200, from ``.npz`` files) against the fastest of 3 runs of the bare chunked float32 product
(benchmarks/eval_speed.py's) in this process: goal ≤ 1.35× — the start-up and the file reads included.

The gallery is 100 photos of the embedded glyph benchmark indexed with the default method-B network
(``tf_efficientnet_lite0``, untrained: start-up does not depend on the weights' values).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, started, write_results  # noqa: E402

BIN = Path(sys.executable).parent
GOALS = {"config": 0.7, "list": 0.7, "eval-features": 1.6, "search": 2.5}


def wall(argv: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def make_gallery(tmp: Path) -> tuple[Path, Path]:
    """A 100-photo gallery of the default method-B network and one sketch to search it with."""
    import torch

    from sketchquant.app.build import build_module
    from sketchquant.app.methods import compose
    from sketchquant.core.config import to_container
    from sketchquant.datamodules.glyphs import make_glyph_benchmark

    data = tmp / "glyphs"
    make_glyph_benchmark(data, num_classes=10, num_unseen=2, photos_per_class=10, sketches_per_class=2)
    cfg = compose("zs_sbir", [f"data.root={data}"])
    module = build_module(cfg, type("Facts", (), {"num_seen_classes": 8})(), inference=True)
    ckpt = tmp / "model.ckpt"
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "sketchquant": to_container(cfg),
        },
        ckpt,
    )
    photos = sorted((data / "photo").rglob("*.png"))[:100]
    listing = tmp / "photos.txt"
    listing.write_text("".join(f"{p}\n" for p in photos))
    gallery = tmp / "gallery"
    subprocess.run(
        [
            str(BIN / "sketchquant"),
            "index",
            "--ckpt",
            str(ckpt),
            "--images",
            str(listing),
            "--out",
            str(gallery),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    sketch = sorted((data / "sketch").rglob("*.png"))[0]
    return gallery, sketch


def quickdraw(tmp: Path, repeats: int) -> dict:
    from eval_speed import SCALES, bare_matmul, make_data

    q, ql, g, gl = make_data(**SCALES["quickdraw"])
    np.save  # noqa: B018 - the files below are what a user passes
    np.savez(tmp / "q.npz", features=q, labels=ql)
    np.savez(tmp / "g.npz", features=g, labels=gl)
    bare = bare_matmul(q, g, repeats=3)
    del q, g
    argv = [str(BIN / "sketchquant"), "eval-features", str(tmp / "q.npz"), str(tmp / "g.npz"), "--k", "200"]
    runs = [wall(argv, tmp) for _ in range(repeats)]
    return {
        "shape": [int(len(ql)), int(len(gl)), 512],
        "command": "sketchquant eval-features q.npz g.npz --k 200",
        "bare_seconds": min(bare),
        "bare_seconds_runs": bare,
        "eval_features_seconds": statistics.median(runs),
        "eval_features_seconds_runs": runs,
        "ratio": statistics.median(runs) / min(bare),
        "goal": 1.35,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quickdraw", action="store_true", help="also eval-features at QuickDraw scale")
    ap.add_argument("--out", type=Path, default=RESULTS / "cli_start.json")
    args = ap.parse_args()
    meta = started()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        rng = np.random.default_rng(0)
        for part in ("q", "g"):
            np.savez(tmp / f"{part}10.npz", features=rng.normal(size=(10, 10)), labels=np.arange(10) % 3)
        gallery, sketch = make_gallery(tmp)
        cli = str(BIN / "sketchquant")
        commands = {
            "import torch": [sys.executable, "-c", "import torch"],
            "config": [cli, "config", "zs_sbir"],
            "list": [cli, "list"],
            "eval-features": [cli, "eval-features", str(tmp / "q10.npz"), str(tmp / "g10.npz")],
            "search": [cli, "search", "--gallery", str(gallery), str(sketch), "--k", "10"],
        }
        for argv in commands.values():  # warm the page cache and the kernel cache once
            wall(argv, tmp)
        runs: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeats):  # interleaved: a slow moment hits every command alike
            for name, argv in commands.items():
                runs[name].append(wall(argv, tmp))
        base = statistics.median(runs["import torch"])
        rows = []
        for name, times in runs.items():
            med = statistics.median(times)
            row = {
                "command": " ".join(
                    Path(commands[name][0]).name if i == 0 else a for i, a in enumerate(commands[name])
                )
            }
            row.update(name=name, seconds=med, seconds_runs=times, ratio=med / base, goal=GOALS.get(name))
            row["met"] = None if row["goal"] is None else row["ratio"] <= row["goal"]
            rows.append(row)
        figures = {"baseline": "python -c 'import torch'", "baseline_seconds": base, "commands": rows}
        if args.quickdraw:
            figures["quickdraw"] = quickdraw(tmp, repeats=3)
    print(f"{'command':<16} {'median s':>9} {'× import torch':>15} {'goal':>6}")
    for row in rows:
        goal = f"{row['goal']:.1f}" if row["goal"] else ""
        print(f"{row['name']:<16} {row['seconds']:9.2f} {row['ratio']:15.2f} {goal:>6}")
    if args.quickdraw:
        qd = figures["quickdraw"]
        print(
            f"QuickDraw eval-features {qd['eval_features_seconds']:.1f} s vs bare {qd['bare_seconds']:.1f} s: "
            f"{qd['ratio']:.2f}x (goal 1.35)"
        )
    write_results(args.out, meta, figures)


if __name__ == "__main__":
    main()
