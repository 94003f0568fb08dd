"""Reading checkpoints written by ``sketchquant train``: the config each one carries, and the trained
network itself without a Trainer (for export, galleries and search)."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from sketchquant.app.methods import METHODS, from_container, method_of, module_kwargs
from sketchquant.core.config import ConfigError

__all__ = [
    "CONFIG_KEY",
    "checkpoint_problem",
    "read_checkpoint",
    "load_checkpoint_config",
    "load_trained_module",
]

CONFIG_KEY = "sketchquant"  # where a checkpoint carries its resolved config


def _open(path: Path, mmap: bool = False) -> tuple[dict | None, str | None]:
    """``(checkpoint dict, None)`` or ``(None, why it cannot be read)``: missing, truncated or foreign."""
    if not path.is_file():
        return None, "not found"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - any failure to read is a broken file
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        return None, f"truncated or not a checkpoint ({first})"
    if not isinstance(ckpt, dict):
        return None, f"not a Lightning checkpoint (holds a {type(ckpt).__name__})"
    return ckpt, None


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint dict at ``path``; a missing, truncated or foreign file is a :class:`ConfigError`
    naming it."""
    ckpt, problem = _open(Path(path))
    if problem is not None:
        raise ConfigError(
            f"checkpoint {path} {'cannot be read: ' if problem != 'not found' else ''}{problem}"
        )
    return ckpt


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be resumed from (missing, truncated, not a Lightning training checkpoint), or
    ``None``. Tensors are memory-mapped, not read: cheap also for large checkpoints."""
    ckpt, problem = _open(Path(path), mmap=True)
    if problem is not None:
        return problem
    missing = [k for k in ("state_dict", "loops", "optimizer_states") if k not in ckpt]
    if missing:
        return f"not a training checkpoint (no {', '.join(missing)})"
    return None


def load_checkpoint_config(
    path: str | os.PathLike, overrides: list[str] | None = None, need: str | None = None
) -> tuple[DictConfig, dict]:
    """The resolved config a checkpoint carries (with ``overrides`` on top) and the raw checkpoint.

    ``need`` names a :class:`~sketchquant.app.methods.Method` capability (e.g. ``"codes"``) the
    checkpoint's method must have; otherwise the command is refused with a message saying why."""
    ckpt = read_checkpoint(path)
    saved = ckpt.get(CONFIG_KEY)
    if not saved:
        raise ConfigError(
            f"checkpoint {path} was not written by sketchquant (no '{CONFIG_KEY}' config inside)"
        )
    cfg = from_container(saved, overrides)
    method = method_of(cfg)
    if need and not getattr(method, need):
        able = " or ".join(repr(m) for m, rec in METHODS.items() if getattr(rec, need))
        raise ConfigError(
            f"checkpoint {path} is a '{method.name}' model, but this command needs a {able} model "
            f"(one with {need})"
        )
    return cfg, ckpt


def load_trained_module(
    path: str | os.PathLike, overrides: list[str] | None = None, need: str | None = None
) -> tuple[DictConfig, pl.LightningModule, dict]:
    """``(cfg, module, raw checkpoint)``: the network a checkpoint holds, in eval mode, on the CPU.

    The data facts the constructor needs (class count, multi-label, image size) come from the
    checkpoint's hyper-parameters, so no data is read; the backbone is built without pretrained weights
    (the ``state_dict`` replaces every tensor), so no weights file or network is touched."""
    cfg, raw = load_checkpoint_config(path, overrides, need)
    state = raw.get("state_dict")
    if not isinstance(state, dict) or not state:
        raise ConfigError(f"checkpoint {path} holds no 'state_dict' (model weights)")
    method = method_of(cfg)
    hp = dict(raw.get("hyper_parameters") or {})
    params = inspect.signature(method.module).parameters
    cfg.model.weights = "none"  # everything comes from the state_dict
    kwargs: dict[str, Any] = {k: v for k, v in hp.items() if k in params}
    kwargs.update(module_kwargs(cfg, _HyperParameters(hp, cfg)))
    module = method.module(**{k: v for k, v in kwargs.items() if k in params})
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise ConfigError(
            f"checkpoint {path}: its weights do not fit the model its config describes "
            f"(were model overrides given?): {first}"
        ) from err
    module.eval()
    return cfg, module, raw


class _HyperParameters:
    """The data facts a module was built with, read back from its hyper-parameters."""

    def __init__(self, hp: dict, cfg: DictConfig) -> None:
        if "num_classes" not in hp:
            raise ConfigError(
                "the checkpoint does not say how many classes its model has (no hyper_parameters)"
            )
        self.num_classes = self.num_seen_classes = int(hp["num_classes"])
        self.multi_label = bool(hp.get("multi_label", False))
        self.image_size = hp.get("image_size") or cfg.data.image_size
