"""The two entry points of a run: :func:`train` (fit, then test the best checkpoint) and :func:`evaluate`
(test a checkpoint with the config it carries)."""

from __future__ import annotations

import logging
import os
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.utilities.exceptions import SIGTERMException

from sketchquant.app.build import build_datamodule, build_module, build_trainer
from sketchquant.app.checkpoints import (
    ensemble_path,
    load_checkpoint_config,
    read_checkpoint,
    write_weight_ensemble,
)
from sketchquant.app.loggers import finish_loggers
from sketchquant.app.methods import compose, method_of
from sketchquant.app.rundir import (
    RunFileLogging,
    expect_queries,
    find_resume,
    new_run_dir,
    queries_name,
    restore_env,
    setup_file_logging,
    write_config,
    write_results,
)
from sketchquant.callbacks.last_checkpoint import RunStopped
from sketchquant.core.config import to_container
from sketchquant.core.io import DiskFullError
from sketchquant.core.report import print_results

log = logging.getLogger("sketchquant")


def best_model_score(checkpoint_callback: Any, best: str) -> float | None:
    """``best_model_score``; under ddp_spawn/ddp_fork it stays in the worker (Lightning sends back only the
    path), so read it from the best checkpoint's ModelCheckpoint state."""
    score = (
        getattr(checkpoint_callback, "best_model_score", None) if checkpoint_callback is not None else None
    )
    if score is None and best and Path(best).is_file():
        state = read_checkpoint(best, mmap=True)
        for key, value in (state.get("callbacks") or {}).items():
            if str(key).startswith("ModelCheckpoint") and isinstance(value, dict):
                if value.get("best_model_path") == best and value.get("best_model_score") is not None:
                    score = value["best_model_score"]
                    break
    return None if score is None else float(score)


def float_metrics(results: list[dict] | dict) -> dict[str, float]:
    merged: dict[str, float] = {}
    for item in results if isinstance(results, list) else [results]:
        for key, value in item.items():
            try:
                merged[key] = float(value)
            except (TypeError, ValueError):
                continue
    return merged


def _quiet_known_warnings() -> None:

    for pattern in (
        ".*exists and is not empty.*",
        ".*does not have many workers.*",
        ".*LeafSpec.*",
        ".*is deprecated, use.*TreeSpec.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)


def _fit(trainer: pl.Trainer, module, datamodule, ckpt_path: str | None, run_dir: Path) -> None:
    """``trainer.fit``; a stop on a signal ends the process with 128 + the signal number, after saying
    which checkpoint to resume from; a full disk is logged before it is raised."""
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except RunStopped as stop:  # SIGUSR1 (SLURM's warning before the time limit): last.ckpt written
        log.warning("%s; continue with resume=auto (or requeued SLURM job)", stop)
        raise
    except SIGTERMException as err:
        log.warning(
            "SIGTERM at epoch %d, step %d: continue with resume=auto (from %s)",
            trainer.current_epoch,
            trainer.global_step,
            run_dir / "checkpoints" / "last.ckpt",
        )
        raise SystemExit(128 + signal.SIGTERM) from err
    except DiskFullError as err:
        log.error("%s", err)
        raise


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit (optionally resuming), then test the best checkpoint. Returns run folder and test metrics."""
    _quiet_known_warnings()
    outer_run_dir_env = os.environ.get("SKETCHQUANT_RUN_DIR")  # restored on return (see new_run_dir)
    resume = find_resume(cfg)
    run_dir = resume[0] if resume else new_run_dir(cfg)
    os.environ["SKETCHQUANT_RUN_DIR"] = str(run_dir)
    setup_file_logging(run_dir)
    write_config(run_dir, cfg, resumed=resume is not None)
    log.info("run folder: %s", run_dir)
    if resume and resume[1].name != "last.ckpt":
        log.warning("resuming from %s (see the error above about last.ckpt)", resume[1])
    pl.seed_everything(cfg.seed, workers=True)

    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    module = build_module(cfg, datamodule)
    module.sketchquant_config = to_container(cfg)  # every checkpoint carries its config
    trainer = build_trainer(cfg, run_dir, resuming=resume is not None)
    trainer.callbacks.append(RunFileLogging(str(run_dir)))
    try:
        _fit(trainer, module, datamodule, str(resume[1]) if resume else None, run_dir)
        metrics: dict[str, float] = {}
        ckpt = trainer.checkpoint_callback
        best = getattr(ckpt, "best_model_path", "") if ckpt is not None else ""
        score = best_model_score(ckpt, best)
        val = {cfg.monitor: score} if score is not None else {}
        expect_queries(trainer, run_dir / queries_name("results.json"))  # results.json is replaced too
        if best and getattr(module.config, "weight_ensemble", 1.0) < 1.0:  # WiSE-FT: test what is served
            if trainer.is_global_zero:
                write_weight_ensemble(module, best)
            trainer.strategy.barrier("weight_ensemble")
            best = str(ensemble_path(best))
        if cfg.test_after_fit:
            results = trainer.test(
                module, datamodule=datamodule, ckpt_path=best or None, verbose=False, weights_only=True
            )
            metrics = float_metrics(results)
        write_results(run_dir, metrics, best or "last weights", val=val)
        if cfg.test_after_fit:
            if trainer.is_global_zero:
                title = f"{cfg.experiment}: test — {Path(best).name if best else 'last weights'}"
                print_results(title, metrics, unnamed=method_of(cfg).features.unnamed)
    finally:
        finish_loggers(trainer)
        restore_env("SKETCHQUANT_RUN_DIR", outer_run_dir_env)
    return {"run_dir": str(run_dir), "test": metrics, "val": val}


def train_experiment(experiment: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """``sketchquant train EXPERIMENT key=value ...``: compose the config, then :func:`train`."""
    return train(compose(experiment, overrides))


def evaluate(
    ckpt: str | os.PathLike, overrides: list[str] | None = None, *, trust: bool = False
) -> dict[str, Any]:
    """Test a checkpoint on its experiment's test split (unseen classes / query vs database). The file is
    read once, weights only (``trust``: see :mod:`sketchquant.app.checkpoints`)."""
    _quiet_known_warnings()
    outer_run_dir_env = os.environ.get("SKETCHQUANT_RUN_DIR")
    ckpt_path = str(ckpt)
    cfg, raw = load_checkpoint_config(ckpt_path, overrides, trust=trust)
    run_dir = Path(ckpt_path).resolve().parent.parent
    if not (run_dir / "config.yaml").exists():
        run_dir = Path(cfg.run_dir) / cfg.experiment / f"eval-{time.strftime('%Y%m%d-%H%M%S')}"
    os.environ["SKETCHQUANT_RUN_DIR"] = str(run_dir)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("test")
    module = build_module(cfg, datamodule, inference=True)  # the checkpoint's weights; no teacher
    module.on_load_checkpoint(raw)
    module.load_state_dict(raw["state_dict"])
    eval_dir = run_dir / f"eval-{time.strftime('%Y%m%d-%H%M%S')}"
    trainer = build_trainer(cfg, eval_dir, logger=False)
    expect_queries(trainer, run_dir / queries_name(f"{eval_dir.name}.json"))
    try:
        results = trainer.test(module, datamodule=datamodule, verbose=False)
    finally:
        finish_loggers(trainer)
        restore_env("SKETCHQUANT_RUN_DIR", outer_run_dir_env)
    metrics = float_metrics(results)
    write_results(run_dir, metrics, ckpt_path, name=f"{eval_dir.name}.json")
    if trainer.is_global_zero:
        print_results(f"evaluate {ckpt_path}", metrics, unnamed=method_of(cfg).features.unnamed)
    return {"run_dir": str(run_dir), "test": metrics}
