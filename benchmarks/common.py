"""What every benchmark records beside its figures, so a results file says where it came from: the commit,
the exact command, the machine (cores, CPU model) and the 1-minute load average before and after.

    meta = started()          # before the measurements
    ...
    write_results(path, meta, {...figures...})   # adds load_after, writes atomically

and, for the benchmarks that search, :func:`random_checkpoint` (the default method-B network, untrained).
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            # results files and rendered docs are what benchmarks write, not code: they do not make it dirty
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "--", "."]
            + [":(exclude)benchmarks/results", ":(exclude)docs", ":(exclude)README.md"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def load() -> float:
    return round(os.getloadavg()[0], 2)


def started(argv: list[str] | None = None) -> dict[str, Any]:
    """The record's header, taken before the measurements."""
    argv = sys.argv if argv is None else argv
    script = Path(argv[0])
    try:
        script = script.resolve().relative_to(REPO)
    except ValueError:
        pass
    return {
        "commit": _commit(),
        "command": "python " + shlex.join([str(script), *argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "load_before": load(),
    }


def write_results(path: str | os.PathLike, meta: dict[str, Any], figures: dict[str, Any]) -> Path:
    """``{**meta, "load_after", **figures}`` as JSON at ``path``, written atomically."""
    sys.path.insert(0, str(REPO))
    from sketchquant.core.io import atomic_write_json

    path = Path(path)
    atomic_write_json(path, {**meta, "load_after": load(), **figures})
    print(f"results -> {path}")
    return path


class _Facts:
    """The data facts the module is built from (no data is read)."""

    num_classes = num_seen_classes = 10
    multi_label = False
    image_size = None


def random_checkpoint(path: Path, tiny: bool, overrides: list[str] | None = None, **extra: Any) -> Path:
    """A checkpoint at ``path`` of the default method-B network with random weights (no training and no
    pretrained weights: speed only); ``tiny``: timm's test network at 32 px; ``overrides`` come after those;
    ``extra`` goes to the module's constructor (``inference=True``)."""
    import torch

    from sketchquant.app.build import build_module
    from sketchquant.app.checkpoints import CONFIG_KEY
    from sketchquant.app.methods import compose
    from sketchquant.core.config import to_container

    over = ["model.weights=none", "data.num_workers=0"]
    if tiny:
        over += [
            "model.backbone=test_efficientnet",
            "model.embed_dim=32",
            "data.image_size=32",
            "eval.pq_k=4",
        ]
    cfg = compose("zs_sbir", [*over, *(overrides or [])])
    module = build_module(cfg, _Facts(), **extra)
    state = {
        CONFIG_KEY: to_container(cfg),
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
    }
    torch.save(state, path)
    return path
