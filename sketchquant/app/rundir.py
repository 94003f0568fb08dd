"""Run folders: where a run writes, how ``resume=`` finds its checkpoint, the run's ``train.log``,
``config.yaml`` and ``results.json``.

Run folder: ``<run_dir>/<experiment>/<YYYYmmdd-HHMMSS>[-<name>]/`` holding ``config.yaml`` (resolved),
``checkpoints/`` (``last.ckpt`` + best by ``monitor``), ``metrics.csv``, ``train.log`` and, after testing,
``results.json`` with ``queries.npz`` beside it (every test query's value of every metric, docs/comparing.md;
``evaluate`` writes ``eval-<time>.json`` and ``eval-<time>.queries.npz``). Under torchrun/SLURM every
process derives the same folder from the job id.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from sketchquant.app.checkpoints import checkpoint_problem
from sketchquant.callbacks.retrieval_evaluator import RetrievalEvaluator
from sketchquant.core.config import ConfigError, to_yaml
from sketchquant.core.io import atomic_write_json, atomic_write_text

log = logging.getLogger("sketchquant")


def job_id() -> str | None:
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
    job = job_id()
    leaf = time.strftime("%Y%m%d-%H%M%S") if job is None else job
    if cfg.name:
        leaf += f"-{cfg.name}"
    path = Path(cfg.run_dir) / cfg.experiment / leaf
    os.environ["SKETCHQUANT_RUN_DIR"] = str(path)
    return path


#: where a run folder keeps the checkpoint to resume from, newest first (``last.prev.ckpt``: the one the
#: last write replaced, see :class:`sketchquant.callbacks.AtomicCheckpointIO`)
RESUME_FILES = ("last.ckpt", "last.prev.ckpt")


def _good_checkpoint(run_dir: Path, what: str) -> Path:
    """The newest readable of ``run_dir/checkpoints/{last,last.prev}.ckpt``; each broken one is reported in
    one line naming it. None readable: :class:`ConfigError`."""

    problems = []
    for name in RESUME_FILES:
        path = run_dir / "checkpoints" / name
        if not path.exists():
            continue
        problem = checkpoint_problem(path)
        if problem is None:
            if problems:
                log.warning("%s: resuming from the previous checkpoint %s instead", what, path)
            return path
        log.error("%s: cannot resume from %s: %s", what, path, problem)
        problems.append(f"{path}: {problem}")
    raise ConfigError(f"{what}: no readable checkpoint in {run_dir / 'checkpoints'} ({'; '.join(problems)})")


def _requeued_run_dir(cfg: DictConfig) -> Path | None:
    """A requeued SLURM job (``SLURM_RESTART_COUNT`` ≥ 1): its own run folder, if it holds a checkpoint."""
    if not os.environ.get("SLURM_JOB_ID") or int(os.environ.get("SLURM_RESTART_COUNT") or 0) < 1:
        return None
    leaf = f"slurm{os.environ['SLURM_JOB_ID']}" + (f"-{cfg.name}" if cfg.name else "")
    run_dir = Path(cfg.run_dir) / cfg.experiment / leaf
    if any((run_dir / "checkpoints" / name).exists() for name in RESUME_FILES):
        return run_dir
    return None


def find_resume(cfg: DictConfig) -> tuple[Path, Path] | None:
    """Where a run continues: ``(run_dir, ckpt)``, or ``None`` for a new run.

    - ``resume=auto``: the newest run folder of this experiment (and name) with a checkpoint to resume from;
    - ``resume=PATH``: that checkpoint, continuing in its run folder;
    - a requeued SLURM job (``SLURM_RESTART_COUNT`` ≥ 1, with or without ``resume=``): its own folder.

    In a run folder, ``checkpoints/last.ckpt`` is used, or ``last.prev.ckpt`` when ``last.ckpt`` is
    truncated or not a checkpoint (logged as an error naming it). A broken ``resume=PATH`` is an error."""
    requeued = _requeued_run_dir(cfg) if cfg.resume in (None, "auto") else None
    if requeued is not None:
        log.info("requeued SLURM job: continuing %s", requeued)
        return requeued, _good_checkpoint(requeued, "requeued SLURM job")
    if not cfg.resume:
        return None
    if cfg.resume == "auto":
        base = Path(cfg.run_dir) / cfg.experiment
        folders = {p.parent.parent for name in RESUME_FILES for p in base.glob(f"*/checkpoints/{name}")}
        if cfg.name:
            folders = {f for f in folders if f.name.endswith(f"-{cfg.name}")}
        if not folders:
            log.warning("resume=auto: no %s/*/checkpoints/last.ckpt yet; starting a new run", base)
            return None

        def newest(folder: Path) -> float:
            return max(p.stat().st_mtime for p in (folder / "checkpoints").glob("last*.ckpt"))

        run_dir = max(folders, key=newest)
        return run_dir, _good_checkpoint(run_dir, "resume=auto")
    ckpt = Path(cfg.resume)
    if not ckpt.is_file():
        raise ConfigError(
            f"resume={cfg.resume!r}: no such checkpoint file (expected .../checkpoints/last.ckpt)"
        )

    problem = checkpoint_problem(ckpt)
    if problem is not None:
        prev = ckpt.with_name(f"{ckpt.stem}.prev{ckpt.suffix}")
        hint = f"; the previous one is {prev} (resume={prev})" if prev.is_file() else ""
        raise ConfigError(f"resume={cfg.resume!r}: cannot resume from {ckpt}: {problem}{hint}")
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


def queries_name(results_name: str) -> str:
    """The per-query file beside a results file: ``results.json`` → ``queries.npz``,
    ``eval-<time>.json`` → ``eval-<time>.queries.npz``."""
    stem = Path(results_name).stem
    return "queries.npz" if stem == "results" else f"{stem}.queries.npz"


def expect_queries(trainer: pl.Trainer, path: Path) -> None:
    """Before a test: its evaluator's rank 0 writes the per-query file to ``path`` (the evaluator runs in
    the worker under ddp_spawn / ddp_fork, so it writes it itself); a file left by an earlier test goes."""
    for callback in trainer.callbacks:
        if isinstance(callback, RetrievalEvaluator):
            callback.queries_path = str(path)
    if rank_zero_only.rank == 0:
        path.unlink(missing_ok=True)


@rank_zero_only
def write_results(
    run_dir: Path,
    metrics: dict[str, float],
    ckpt: str,
    name: str = "results.json",
    val: dict[str, float] | None = None,
) -> None:
    """``results.json``: ``{"checkpoint", "val": {monitor: best score}, "metrics": {test metrics},
    "queries": the per-query file beside it (its name; null when the run was not tested)}``."""
    queries = queries_name(name)
    payload = {
        "checkpoint": str(ckpt),
        "val": val or {},
        "metrics": metrics,
        "queries": queries if (run_dir / queries).is_file() else None,
    }
    atomic_write_json(run_dir / name, payload)
