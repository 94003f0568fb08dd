"""Build a DataModule, a LightningModule, callbacks, loggers and a Trainer from a checked config; fit/test.

Run folder: ``<run_dir>/<experiment>/<YYYYmmdd-HHMMSS>[-<name>]/`` holding ``config.yaml`` (resolved),
``checkpoints/`` (``last.ckpt`` + best by ``monitor``), ``metrics.csv``, ``train.log`` and, after testing,
``results.json``. Under torchrun/SLURM every process derives the same folder from the job id.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.loggers.logger import rank_zero_experiment
from omegaconf import DictConfig
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from sketchquant.core.config import ConfigError, as_kwargs, from_container, to_container, to_yaml

log = logging.getLogger("sketchquant")
CONFIG_KEY = "sketchquant"  # where a checkpoint carries its resolved config


# --------------------------------------------------------------------------------------------------
# small file helpers


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
def _setup_file_logging(run_dir: Path) -> None:
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
def _write_config(run_dir: Path, cfg: DictConfig, resumed: bool) -> None:
    name = (
        "config.yaml"
        if not resumed or not (run_dir / "config.yaml").exists()
        else (f"config.resume-{time.strftime('%Y%m%d-%H%M%S')}.yaml")
    )
    atomic_write_text(run_dir / name, to_yaml(cfg))


class _RunFileLogging(pl.Callback):
    """Attach ``train.log`` inside ddp_spawn workers (fresh interpreters without the main process' handler)."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        _setup_file_logging(Path(self.run_dir))


class _AppendingExperimentWriter(ExperimentWriter):
    """Lightning's writer deletes an existing ``metrics.csv``. Keep it and add rows: under ddp_spawn/ddp_fork
    fit and test each run in fresh worker processes (a new writer each), and a resumed run continues its
    run folder."""

    def _check_log_dir_exists(self) -> None:
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            header = next(csv.reader(file), [])
        self.metrics_keys = sorted(set(header))
        if header and header != self.metrics_keys:  # appended rows follow the sorted header
            self._rewrite_with_new_header(self.metrics_keys)


class _AppendingCSVLogger(CSVLogger):
    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment


def _best_model_score(checkpoint_callback: Any, best: str) -> float | None:
    """``best_model_score``; under ddp_spawn/ddp_fork it stays in the worker (Lightning sends back only the
    path), so read it from the best checkpoint's ModelCheckpoint state."""
    score = (
        getattr(checkpoint_callback, "best_model_score", None) if checkpoint_callback is not None else None
    )
    if score is None and best and Path(best).is_file():
        import torch

        state = torch.load(best, map_location="cpu", weights_only=False, mmap=True)
        for key, value in (state.get("callbacks") or {}).items():
            if str(key).startswith("ModelCheckpoint") and isinstance(value, dict):
                if value.get("best_model_path") == best and value.get("best_model_score") is not None:
                    score = value["best_model_score"]
                    break
    return None if score is None else float(score)


# --------------------------------------------------------------------------------------------------
# builders


def _backbone_data_config(backbone: str) -> dict:
    from datamodules.transforms import resolve_data_config

    return resolve_data_config(backbone)


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    kwargs = as_kwargs(cfg.data, drop=("kind",))
    if kwargs.get("image_size") is None or kwargs.get("mean") is None or kwargs.get("std") is None:
        dcfg = _backbone_data_config(cfg.model.backbone)
        for key in ("image_size", "mean", "std"):
            if kwargs.get(key) is None:
                kwargs[key] = dcfg[key]
    for key in ("mean", "std", "affine_scale"):
        if kwargs.get(key) is not None:
            kwargs[key] = tuple(kwargs[key])
    if cfg.data.kind == "sketch_photo":
        from datamodules import SketchPhotoDataModule

        return SketchPhotoDataModule(**kwargs)
    from datamodules import ImageDataModule

    return ImageDataModule(**kwargs)


def build_module(cfg: DictConfig, datamodule: pl.LightningDataModule) -> pl.LightningModule:
    model = as_kwargs(cfg.model, drop=("name",))
    common = {"max_epochs": cfg.trainer.max_epochs}
    if cfg.model.name == "zs_sbir":
        from lightning_modules import ZeroShotSketchModule

        return ZeroShotSketchModule(num_classes=datamodule.num_seen_classes, **model, **common)
    from lightning_modules import QuantizationModule

    model.pop("alpha")  # the AlphaRamp callback owns α(t)
    return QuantizationModule(
        num_classes=datamodule.num_classes,
        multi_label=bool(datamodule.multi_label),
        image_size=int(cfg.data.image_size or _backbone_data_config(cfg.model.backbone)["image_size"]),
        **model,
        **common,
    )


def build_callbacks(cfg: DictConfig, run_dir: Path, *, progress_bar: bool) -> list[pl.Callback]:
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar

    from callbacks import EpochSeed, EpochSummary, NaNGuard, RetrievalEvaluator

    cbs: list[pl.Callback] = [
        NaNGuard(),
        EpochSeed(cfg.seed),
        ModelCheckpoint(  # first ModelCheckpoint = trainer.checkpoint_callback: the best by the monitor
            dirpath=run_dir / "checkpoints",
            filename="best-epoch{epoch:02d}",
            monitor=cfg.monitor,
            mode=cfg.monitor_mode,
            save_top_k=cfg.save_top_k,
            save_last=False,
            auto_insert_metric_name=False,
        ),
        # last.ckpt after EVERY epoch (Lightning's save_last only refreshes it when a best one is saved)
        ModelCheckpoint(
            dirpath=run_dir / "checkpoints",
            filename="last",
            monitor=None,
            save_top_k=1,
            enable_version_counter=False,
        ),
        RetrievalEvaluator(**as_kwargs(cfg.eval), run_dir=str(run_dir)),
        LearningRateMonitor(logging_interval="step"),
        EpochSummary(echo=not progress_bar),
    ]
    if cfg.model.name == "zs_sbir":
        from callbacks import TeacherDistillation

        cbs.append(TeacherDistillation(tau=cfg.model.tau))
    else:
        from callbacks import AlphaRamp

        a = cfg.model.alpha
        cbs.append(AlphaRamp(alpha_final=a.final, t1=a.t1, t2=a.t2, shape=a.shape, unit=a.unit))
    if progress_bar:
        cbs.append(RichProgressBar())
    return cbs


def build_loggers(cfg: DictConfig, run_dir: Path) -> list:
    loggers: list = [_AppendingCSVLogger(save_dir=str(run_dir), name="", version="")]
    if cfg.logger.name == "wandb":
        from pytorch_lightning.loggers import WandbLogger

        # never wait on the network: offline unless the user asked for online (SPEC §E)
        online = os.environ.get("WANDB_MODE") == "online" and cfg.logger.offline is not True
        if not online:
            os.environ["WANDB_MODE"] = "offline"
        loggers.append(
            WandbLogger(
                project=cfg.logger.project,
                entity=cfg.logger.entity,
                group=cfg.logger.group,
                tags=list(cfg.logger.tags),
                name=f"{cfg.experiment}/{run_dir.name}",
                save_dir=str(run_dir),
                log_model=cfg.logger.log_model,
                config=to_container(cfg),
            )
        )
    elif cfg.logger.name == "tensorboard":
        from pytorch_lightning.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=""))
    return loggers


def build_trainer(cfg: DictConfig, run_dir: Path, **extra: Any) -> pl.Trainer:
    from callbacks import AtomicCheckpointIO

    trainer_kwargs = as_kwargs(cfg.trainer)
    progress_bar = bool(trainer_kwargs.pop("enable_progress_bar")) and sys.stdout.isatty()
    kwargs = dict(
        default_root_dir=str(run_dir),
        callbacks=build_callbacks(cfg, run_dir, progress_bar=progress_bar),
        logger=build_loggers(cfg, run_dir),
        enable_progress_bar=progress_bar,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=cfg.data.kind != "sketch_photo",  # its train sampler shards by rank itself
        **trainer_kwargs,
    )
    kwargs.update(extra)
    return pl.Trainer(**kwargs)


def _save_config_hook(module: pl.LightningModule, cfg: DictConfig) -> None:
    """Every checkpoint carries the resolved config, so ``evaluate --ckpt`` needs nothing else."""
    module.sketchquant_config = to_container(cfg)


def _finish_loggers(trainer: pl.Trainer) -> None:
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger":
            import wandb

            wandb.finish()


def results_table(metrics: dict[str, float]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Rows = feature variants (``raw``, ``proto``, ``fused``, ``codes``, ``float``), columns = metrics.

    ``test/map_all`` goes to row ``raw``; ``test/proto/map_all`` to row ``proto``; ``*_micro`` and counts
    are left out (they stay in ``results.json`` and ``metrics.csv``)."""
    rows: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) < 2 or parts[-1].endswith("_micro") or parts[-1].startswith("num_"):
            continue
        variant = parts[1] if len(parts) == 3 else "raw"
        rows.setdefault(variant, {})[parts[-1]] = value
    columns = sorted({c for r in rows.values() for c in r}, key=lambda c: (not c.startswith("map"), c))
    order = {"raw": 0, "proto": 1, "fused": 2, "codes": 3, "float": 4}
    body = [
        (v, [f"{rows[v][c]:.4f}" if c in rows[v] else "" for c in columns])
        for v in sorted(rows, key=lambda v: (order.get(v, 9), v))
    ]
    return columns, body


def _print_results(title: str, metrics: dict[str, float]) -> None:
    columns, body = results_table(metrics)
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        table.add_column("features")
        for col in columns:
            table.add_column(col, justify="right")
        for variant, cells in body:
            table.add_row(variant, *cells)
        Console(width=max(100, 14 * (len(columns) + 1))).print(table)
    except ImportError:  # pragma: no cover
        print(title)
        print("features  " + "  ".join(columns))
        for variant, cells in body:
            print(f"{variant:8s}  " + "  ".join(cells))


def _float_metrics(results: list[dict] | dict) -> dict[str, float]:
    merged: dict[str, float] = {}
    for item in results if isinstance(results, list) else [results]:
        for key, value in item.items():
            try:
                merged[key] = float(value)
            except (TypeError, ValueError):
                continue
    return merged


# --------------------------------------------------------------------------------------------------
# entry points


def _quiet_known_warnings() -> None:
    import warnings

    for pattern in (
        ".*exists and is not empty.*",
        ".*does not have many workers.*",
        ".*LeafSpec.*",
        ".*is deprecated, use.*TreeSpec.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit (optionally resuming), then test the best checkpoint. Returns run folder and test metrics."""
    _quiet_known_warnings()
    outer_run_dir_env = os.environ.get("SKETCHQUANT_RUN_DIR")  # restored on return (see new_run_dir)
    resume = find_resume(cfg)
    run_dir = resume[0] if resume else new_run_dir(cfg)
    os.environ["SKETCHQUANT_RUN_DIR"] = str(run_dir)
    _setup_file_logging(run_dir)
    _write_config(run_dir, cfg, resumed=resume is not None)
    log.info("run folder: %s", run_dir)
    pl.seed_everything(cfg.seed, workers=True)

    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    module = build_module(cfg, datamodule)
    _save_config_hook(module, cfg)
    trainer = build_trainer(cfg, run_dir)
    trainer.callbacks.append(_RunFileLogging(str(run_dir)))
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume[1]) if resume else None)
        metrics: dict[str, float] = {}
        ckpt = trainer.checkpoint_callback
        best = getattr(ckpt, "best_model_path", "") if ckpt is not None else ""
        score = _best_model_score(ckpt, best)
        val = {cfg.monitor: score} if score is not None else {}
        if cfg.test_after_fit:
            results = trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
            metrics = _float_metrics(results)
        _write_results(run_dir, metrics, best or "last weights", val=val)
        if cfg.test_after_fit:
            if trainer.is_global_zero:
                _print_results(
                    f"{cfg.experiment}: test — {Path(best).name if best else 'last weights'}", metrics
                )
    finally:
        _finish_loggers(trainer)
        _restore_env("SKETCHQUANT_RUN_DIR", outer_run_dir_env)
    return {"run_dir": str(run_dir), "test": metrics, "val": val}


def _restore_env(name: str, value: str | None) -> None:
    """A later ``train()`` in the same process must not reuse this run's folder via the inherited variable."""
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


@rank_zero_only
def _write_results(
    run_dir: Path,
    metrics: dict[str, float],
    ckpt: str,
    name: str = "results.json",
    val: dict[str, float] | None = None,
) -> None:
    """``results.json``: ``{"checkpoint", "val": {monitor: best score}, "metrics": {test metrics}}``."""
    payload = {"checkpoint": str(ckpt), "val": val or {}, "metrics": metrics}
    atomic_write_text(run_dir / name, json.dumps(payload, indent=2))


def load_checkpoint_config(
    path: str | os.PathLike, overrides: list[str] | None = None, expect_model: str | None = None
) -> tuple[DictConfig, dict]:
    """The resolved config a checkpoint carries (with ``overrides`` on top) and the raw checkpoint."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise ConfigError(f"cannot read checkpoint {path}: {err}") from err
    saved = ckpt.get(CONFIG_KEY) if isinstance(ckpt, dict) else None
    if not saved:
        raise ConfigError(
            f"checkpoint {path} was not written by sketchquant (no '{CONFIG_KEY}' config inside)"
        )
    cfg = from_container(saved, overrides)
    if expect_model and cfg.model.name != expect_model:
        raise ConfigError(
            f"checkpoint {path} is a '{cfg.model.name}' model, but this command needs a '{expect_model}' model"
        )
    return cfg, ckpt


def evaluate(ckpt_path: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Test a checkpoint on its experiment's test split (unseen classes / query vs database)."""
    _quiet_known_warnings()
    outer_run_dir_env = os.environ.get("SKETCHQUANT_RUN_DIR")
    cfg, _ = load_checkpoint_config(ckpt_path, overrides)
    run_dir = Path(ckpt_path).resolve().parent.parent
    if not (run_dir / "config.yaml").exists():
        run_dir = Path(cfg.run_dir) / cfg.experiment / f"eval-{time.strftime('%Y%m%d-%H%M%S')}"
    os.environ["SKETCHQUANT_RUN_DIR"] = str(run_dir)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("test")
    module = build_module(cfg, datamodule)
    eval_dir = run_dir / f"eval-{time.strftime('%Y%m%d-%H%M%S')}"
    trainer = build_trainer(cfg, eval_dir, logger=False)
    try:
        results = trainer.test(module, datamodule=datamodule, ckpt_path=str(ckpt_path), verbose=False)
    finally:
        _finish_loggers(trainer)
        _restore_env("SKETCHQUANT_RUN_DIR", outer_run_dir_env)
    metrics = _float_metrics(results)
    _write_results(run_dir, metrics, ckpt_path, name=f"{eval_dir.name}.json")
    if trainer.is_global_zero:
        _print_results(f"evaluate {ckpt_path}", metrics)
    return {"run_dir": str(run_dir), "test": metrics}
