"""The config schema's base: the run-level dataclasses (trainer, logger, checkpoint, run), ``choice`` fields
for allowed values, the :class:`Schemas` a method registry hands to composition, and :class:`ConfigError`.
The sections a method owns (``model``, ``data``, ``eval``) are dataclasses beside the classes they
configure; :mod:`sketchquant.core.config` composes and checks everything."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

GROUPS = ("trainer", "logger", "data", "model")


class ConfigError(ValueError):
    """A config problem found before any work starts. The message names key, value and what is allowed."""


def choice(default: Any, *allowed: Any) -> Any:
    """A dataclass field whose value must be one of ``allowed`` (``default`` first). Checked after merging,
    so a typo fails before any work, naming the key, the value and the allowed set."""
    values = tuple(dict.fromkeys((default, *allowed)))
    return field(default=default, metadata={"choices": values})


# --------------------------------------------------------------------------------------------------
# schema


@dataclass
class TrainerConfig:
    """Passed through to ``pytorch_lightning.Trainer`` (same names)."""

    max_epochs: int = 10
    max_steps: int = -1
    accelerator: str = "auto"
    devices: Any = 1  # int, list of ids, or "auto"
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ddp_spawn | ddp_fork | ...
    precision: str = "32-true"
    deterministic: Any = False  # bool or "warn"
    benchmark: bool | None = None
    limit_train_batches: Any = 1.0  # float fraction or int count
    limit_val_batches: Any = 1.0
    limit_test_batches: Any = 1.0
    num_sanity_val_steps: int = 2
    check_val_every_n_epoch: int = 1
    log_every_n_steps: int = 10
    gradient_clip_val: float | None = None
    accumulate_grad_batches: int = 1
    sync_batchnorm: bool = False
    enable_progress_bar: bool = True


@dataclass
class LoggerConfig:
    """CSV is always written; ``name`` adds a dashboard logger."""

    name: str = choice("csv", "wandb", "tensorboard")
    project: str = "sketchquant"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    log_model: bool = False
    offline: bool | None = None  # wandb: None = offline unless WANDB_MODE=online


@dataclass
class CheckpointConfig:
    """``checkpoints/last.ckpt``: written after every epoch; these add writes inside long epochs. A resume
    from one continues at the next batch (same data order and augmentation). 0 = off."""

    every_n_steps: int = 0  # also every N optimizer steps
    every_n_minutes: float = 0.0  # also when N minutes passed since the last write
    keep_previous: bool = True  # the replaced last.ckpt stays as last.prev.ckpt (resume falls back to it)


@dataclass
class RunConfig:
    experiment: str = MISSING
    name: str | None = None
    seed: int = 0
    run_dir: str = "runs"
    resume: str | None = None  # auto | /path/to/last.ckpt
    ckpt: str | None = None  # evaluate: the checkpoint to test
    monitor: str = "val/map_all"
    monitor_mode: str = choice("max", "min")
    save_top_k: int = 1
    early_stop_patience: int | None = None  # stop after this many validations without a better monitor
    test_after_fit: bool = True
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    data: Any = None
    model: Any = None
    eval: Any = None


@dataclass(frozen=True)
class Schemas:
    """What the core checks a config against, handed in by the application's method registry.

    ``sections``: fixed sections (``eval``) → dataclass. ``variants``: sections whose dataclass is chosen by
    a discriminating key: ``{"model": ("name", {"zs_sbir": ZeroShotModelConfig, ...}), "data": ("kind",
    {...})}``. ``pairs``: model name → the data kind it needs."""

    sections: dict[str, type] = field(default_factory=dict)
    variants: dict[str, tuple[str, dict[str, type]]] = field(default_factory=dict)
    pairs: dict[str, str] = field(default_factory=dict)
