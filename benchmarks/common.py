"""What every benchmark records beside its figures, so a results file says where it came from: the commit,
the exact command, the machine (cores, CPU model) and the 1-minute load average before and after.

    meta = started()          # before the measurements
    ...
    write_results(path, meta, {...figures...})   # adds load_after, writes atomically
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
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
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
