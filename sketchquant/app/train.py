"""The two entry points of a run: :func:`train` (fit, then test the best checkpoint) and :func:`evaluate`
(test a checkpoint with the config it carries)."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from sketchquant.app.build import build_datamodule, build_module, build_trainer
from sketchquant.app.checkpoints import load_checkpoint_config
from sketchquant.app.loggers import finish_loggers
from sketchquant.app.rundir import (
    RunFileLogging,
    find_resume,
    new_run_dir,
    restore_env,
    setup_file_logging,
    write_config,
    write_results,
)
from sketchquant.core.config import to_container
from sketchquant.core.report import print_results

log = logging.getLogger("sketchquant")


def best_model_score(checkpoint_callback: Any, best: str) -> float | None:
    """``best_model_score``; under ddp_spawn/ddp_fork it stays in the worker (Lightning sends back only the
    path), so read it from the best checkpoint's ModelCheckpoint state."""
    score = (
        getattr(checkpoint_callback, "best_model_score", None) if checkpoint_callback is not None else None
    )
    if score is None and best and Path(best).is_file():
        state = torch.load(best, map_location="cpu", weights_only=False, mmap=True)
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
    setup_file_logging(run_dir)
    write_config(run_dir, cfg, resumed=resume is not None)
    log.info("run folder: %s", run_dir)
    pl.seed_everything(cfg.seed, workers=True)

    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    module = build_module(cfg, datamodule)
    module.sketchquant_config = to_container(cfg)  # every checkpoint carries its config
    trainer = build_trainer(cfg, run_dir)
    trainer.callbacks.append(RunFileLogging(str(run_dir)))
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume[1]) if resume else None)
        metrics: dict[str, float] = {}
        ckpt = trainer.checkpoint_callback
        best = getattr(ckpt, "best_model_path", "") if ckpt is not None else ""
        score = best_model_score(ckpt, best)
        val = {cfg.monitor: score} if score is not None else {}
        if cfg.test_after_fit:
            results = trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
            metrics = float_metrics(results)
        write_results(run_dir, metrics, best or "last weights", val=val)
        if cfg.test_after_fit:
            if trainer.is_global_zero:
                print_results(
                    f"{cfg.experiment}: test — {Path(best).name if best else 'last weights'}", metrics
                )
    finally:
        finish_loggers(trainer)
        restore_env("SKETCHQUANT_RUN_DIR", outer_run_dir_env)
    return {"run_dir": str(run_dir), "test": metrics, "val": val}


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
        finish_loggers(trainer)
        restore_env("SKETCHQUANT_RUN_DIR", outer_run_dir_env)
    metrics = float_metrics(results)
    write_results(run_dir, metrics, ckpt_path, name=f"{eval_dir.name}.json")
    if trainer.is_global_zero:
        print_results(f"evaluate {ckpt_path}", metrics)
    return {"run_dir": str(run_dir), "test": metrics}
