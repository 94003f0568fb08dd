"""Run folders: where a run writes, how ``resume=`` finds its checkpoint, the run's ``train.log``,
``config.yaml`` and ``results.json``.

Run folder: ``<run_dir>/<experiment>/<YYYYmmdd-HHMMSS>[-<name>]/`` holding ``config.yaml`` (resolved),
``checkpoints/`` (``last.ckpt`` + best by ``monitor``), ``metrics.csv``, ``train.log`` and, after testing,
``results.json``. Under torchrun/SLURM every process derives the same folder from the job id.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from sketchquant.core.config import ConfigError, to_yaml
from sketchquant.core.io import atomic_write_json, atomic_write_text

log = logging.getLogger("sketchquant")


def _job_id() -> str | None:
    for var in ("SKETCHQUANT_RUN_ID", "SLURM_JOB_ID", "TORCHELASTIC_RUN_ID"):
        value = os.environ.get(var)
        if value and value != "none":
            return f"{var.split('_')[0].lower()}{value}"
    return None


def new_run_dir(cfg: DictConfig) -> Path:
    """A fresh run folder, identical on every process of one launch.

    With a job id (``SKETCHQUANT_RUN_ID``, ``SLURM_JOB_ID``, ``TORCHELASTIC_RUN_ID``) the name is the id alone
    (``slurm4242[-name]``), with no date or time: processes on other nodes that start a second (or a midnight)
    later, and a requeued SLURM job (Lightning's ``hpc_ckpt_*.ckpt`` resume looks in this folder), all agree.
    """
    if os.environ.get("SKETCHQUANT_RUN_DIR"):  # set by the first process for re-launched DDP workers
        return Path(os.environ["SKETCHQUANT_RUN_DIR"])
    job = _job_id()
    leaf = time.strftime("%Y%m%d-%H%M%S") if job is None else job
    if cfg.name:
        leaf += f"-{cfg.name}"
    path = Path(cfg.run_dir) / cfg.experiment / leaf
    os.environ["SKETCHQUANT_RUN_DIR"] = str(path)
    return path


def find_resume(cfg: DictConfig) -> tuple[Path, Path] | None:
    """``resume=auto``: the newest run folder of this experiment (and name) with ``checkpoints/last.ckpt``;
    ``resume=PATH``: that checkpoint, continuing in its run folder. Returns ``(run_dir, ckpt)``."""
    if not cfg.resume:
        return None
    if cfg.resume == "auto":
        base = Path(cfg.run_dir) / cfg.experiment
        candidates = sorted(base.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if cfg.name:
            candidates = [c for c in candidates if c.parent.parent.name.endswith(f"-{cfg.name}")]
        if not candidates:
            log.warning("resume=auto: no %s/*/checkpoints/last.ckpt yet; starting a new run", base)
            return None
        ckpt = candidates[-1]
    else:
        ckpt = Path(cfg.resume)
        if not ckpt.is_file():
            raise ConfigError(
                f"resume={cfg.resume!r}: no such checkpoint file (expected .../checkpoints/last.ckpt)"
            )
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    return run_dir, ckpt


#: the loggers whose records go to a run's ``train.log``
RUN_LOG_LOGGERS = (
    "sketchquant",
    "pytorch_lightning",
    "lightning",
    "datamodules",
    "lightning_modules",
    "callbacks",
)


@rank_zero_only
def setup_file_logging(run_dir: Path) -> None:
    """``train.log`` for rank 0. Idempotent: also called in ddp_spawn workers (see :class:`_RunFileLogging`)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = os.path.abspath(run_dir / "train.log")
    if any(getattr(h, "baseFilename", None) == path for h in logging.getLogger("sketchquant").handlers):
        return  # already attached (this process, or inherited by a ddp_fork worker)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(lambda record: getattr(rank_zero_only, "rank", 0) == 0)  # ddp_fork: rank 1 inherits it
    handler.sketchquant_run_log = True
    for name in RUN_LOG_LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, "sketchquant_run_log", False)]:
            logger.removeHandler(old)  # an earlier train() in this process: its run's log stays its own
            old.close()
        logger.addHandler(handler)
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)


@rank_zero_only
def write_config(run_dir: Path, cfg: DictConfig, resumed: bool) -> None:
    name = (
        "config.yaml"
        if not resumed or not (run_dir / "config.yaml").exists()
        else (f"config.resume-{time.strftime('%Y%m%d-%H%M%S')}.yaml")
    )
    atomic_write_text(run_dir / name, to_yaml(cfg))


class RunFileLogging(pl.Callback):
    """Attach ``train.log`` inside ddp_spawn workers (fresh interpreters without the main process' handler)."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        setup_file_logging(Path(self.run_dir))


def restore_env(name: str, value: str | None) -> None:
    """A later ``train()`` in the same process must not reuse this run's folder via the inherited variable."""
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


@rank_zero_only
def write_results(
    run_dir: Path,
    metrics: dict[str, float],
    ckpt: str,
    name: str = "results.json",
    val: dict[str, float] | None = None,
) -> None:
    """``results.json``: ``{"checkpoint", "val": {monitor: best score}, "metrics": {test metrics}}``."""
    payload = {"checkpoint": str(ckpt), "val": val or {}, "metrics": metrics}
    atomic_write_json(run_dir / name, payload)
