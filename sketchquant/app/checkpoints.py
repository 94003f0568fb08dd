"""Reading checkpoints written by ``sketchquant train``: safely, once, without Lightning.

A checkpoint is a pickle, and unpickling can run code. Every checkpoint is therefore read with
``torch.load(weights_only=True)``, which builds only tensors, plain containers and a few registered
types: what this project writes into a checkpoint (weights, optimizer and loop state, the resolved
config as plain data, callback state) loads that way. A file that needs more is refused with a one-line
error; ``trust=True`` (``--trust-checkpoint`` on the command line) is the only way to load it the old
way, and means "I trust whoever made this file as I trust code I run".

For search and export, :func:`load_network` builds the method's pure-torch network (the registry's
``network``) and fills it from the checkpoint's ``state_dict``: no Trainer, no LightningModule, no
pretrained weights, no distillation teacher.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from sketchquant.app.methods import METHODS, from_container, method_of
from sketchquant.core.config import ConfigError
from sketchquant.core.io import atomic_torch_save

__all__ = [
    "CONFIG_KEY",
    "UNSAFE_HINT",
    "UnsafeCheckpointError",
    "checkpoint_problem",
    "read_checkpoint",
    "checkpoint_config",
    "load_checkpoint_config",
    "load_network",
    "ensemble_path",
    "write_weight_ensemble",
]

CONFIG_KEY = "sketchquant"  # where a checkpoint carries its resolved config
UNSAFE_HINT = (
    "loading it would run code from the file; pass --trust-checkpoint (Python: trust=True) only if you "
    "trust its source as you trust code you run"
)


class UnsafeCheckpointError(ConfigError):
    """A checkpoint that holds more than weights-only loading builds (its pickle would run code).
    ``reason``: what it needs, without the file's name and the hint."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def _open(path: Path, *, mmap: bool = False, trust: bool = False) -> tuple[dict | None, str | None]:
    """``(checkpoint dict, None)`` or ``(None, why it cannot be read)``: missing, truncated or foreign;
    raises :class:`UnsafeCheckpointError` for a file that needs arbitrary unpickling (unless ``trust``)."""
    if not path.is_file():
        return None, "not found"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not trust, mmap=mmap)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Weights only load failed" in text:
            name = re.search(r"GLOBAL (\S+)", text)
            reason = "needs arbitrary unpickling" + (
                f" (it refers to {name.group(1)}, which weights-only loading does not build)" if name else ""
            )
            raise UnsafeCheckpointError(f"checkpoint {path} {reason}: {UNSAFE_HINT}", reason) from None
        return (
            None,
            f"truncated or not a checkpoint ({text.splitlines()[0] if text else 'unpickling failed'})",
        )
    except Exception as err:  # noqa: BLE001 - any other failure to read is a broken file
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        return None, f"truncated or not a checkpoint ({first})"
    if not isinstance(ckpt, dict):
        return None, f"not a Lightning checkpoint (holds a {type(ckpt).__name__})"
    return ckpt, None


def read_checkpoint(path: str | os.PathLike, *, trust: bool = False, mmap: bool = False) -> dict:
    """The checkpoint dict at ``path``; a missing, truncated, foreign or unsafe file is a
    :class:`ConfigError` naming it."""
    ckpt, problem = _open(Path(path), mmap=mmap, trust=trust)
    if problem is not None:
        raise ConfigError(
            f"checkpoint {path} {'cannot be read: ' if problem != 'not found' else ''}{problem}"
        )
    return ckpt


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be resumed from (missing, truncated, unsafe, not a Lightning training
    checkpoint), or ``None``. Tensors are memory-mapped, not read: cheap also for large checkpoints."""
    try:
        ckpt, problem = _open(Path(path), mmap=True)
    except UnsafeCheckpointError as err:  # resuming loads weights only: --trust-checkpoint cannot help
        return f"it {err.reason}: loading it would run code from the file"
    if problem is not None:
        return problem
    missing = [k for k in ("state_dict", "loops", "optimizer_states") if k not in ckpt]
    if missing:
        return f"not a training checkpoint (no {', '.join(missing)})"
    return None


#: settings added after checkpoints were written with them absent: such a checkpoint keeps the value that
#: reproduces its own numbers (eval.pq_min_points: K was eval.pq_k as given)
BEFORE_THEY_EXISTED: dict[str, Any] = {"eval.pq_min_points": 0}


def _has(saved: dict, dotted: str) -> bool:
    node: Any = saved
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def checkpoint_config(
    ckpt: dict, path: str | os.PathLike, overrides: list[str] | None = None, need: str | None = None
) -> DictConfig:
    """The resolved config a checkpoint dict carries (with ``overrides`` on top).

    ``need`` names a :class:`~sketchquant.app.methods.Method` capability (e.g. ``"codes"``) the
    checkpoint's method must have; otherwise the command is refused with a message saying why."""
    saved = ckpt.get(CONFIG_KEY)
    if not saved:
        raise ConfigError(
            f"checkpoint {path} was not written by sketchquant (no '{CONFIG_KEY}' config inside)"
        )
    older = [f"{k}={v}" for k, v in BEFORE_THEY_EXISTED.items() if not _has(saved, k)]
    cfg = from_container(saved, [*older, *(overrides or [])])
    method = method_of(cfg)
    if need and not getattr(method, need):
        able = " or ".join(repr(m) for m, rec in METHODS.items() if getattr(rec, need))
        raise ConfigError(
            f"checkpoint {path} is a '{method.name}' model, but this command needs a {able} model "
            f"(one with {need})"
        )
    return cfg


def load_checkpoint_config(
    path: str | os.PathLike,
    overrides: list[str] | None = None,
    need: str | None = None,
    *,
    trust: bool = False,
) -> tuple[DictConfig, dict]:
    """``(config, checkpoint dict)``: :func:`read_checkpoint` then :func:`checkpoint_config`."""
    ckpt = read_checkpoint(path, trust=trust)
    return checkpoint_config(ckpt, path, overrides, need), ckpt


def data_facts(ckpt: dict, cfg: DictConfig, path: str | os.PathLike) -> dict[str, Any]:
    """The data facts a checkpoint's module was built with (class count, image size, multi-label), read
    back from its hyper-parameters (this version's and version 0.1's layouts alike)."""
    hp = dict(ckpt.get("hyper_parameters") or {})
    if "num_classes" not in hp:
        raise ConfigError(
            f"checkpoint {path} does not say how many classes its model has (no hyper_parameters)"
        )
    return {
        "num_classes": int(hp["num_classes"]),
        "multi_label": bool(hp.get("multi_label", False)),
        "image_size": hp.get("image_size") or cfg.data.image_size,
    }


def load_network(
    path: str | os.PathLike,
    overrides: list[str] | None = None,
    need: str | None = None,
    *,
    ckpt: dict | None = None,
    cfg: DictConfig | None = None,
    trust: bool = False,
) -> tuple[DictConfig, torch.nn.Module, dict]:
    """``(cfg, network, checkpoint dict)``: the method's search network (an image batch → its features or
    codes) with the checkpoint's weights, in eval mode, on the CPU. ``ckpt``: the checkpoint dict when
    the caller has read it already (it is read once); ``cfg``: its config when the caller has checked it
    already (with the same ``overrides``).

    The backbone is built without pretrained weights (the ``state_dict`` replaces every tensor) and
    without a teacher, so no weights file or network is touched."""
    if ckpt is None:
        ckpt = read_checkpoint(path, trust=trust)
    if cfg is None:
        cfg = checkpoint_config(ckpt, path, overrides, need)
    state = ckpt.get("state_dict")
    if not isinstance(state, dict) or not state:
        raise ConfigError(f"checkpoint {path} holds no 'state_dict' (model weights)")
    method = method_of(cfg)
    model = OmegaConf.to_object(cfg.model)
    network = method.load("network")(model, data_facts(ckpt, cfg, path))
    try:
        result = network.load_state_dict(state, strict=False)
    except RuntimeError as err:
        first = str(err).splitlines()[1 if len(str(err).splitlines()) > 1 else 0].strip()
        raise ConfigError(
            f"checkpoint {path}: its weights do not fit the model its config describes "
            f"(were model overrides given?): {first}"
        ) from err
    if result.missing_keys:
        raise ConfigError(
            f"checkpoint {path}: its weights do not fit the model its config describes (were model "
            f"overrides given?): {len(result.missing_keys)} tensors missing, e.g. {result.missing_keys[0]}"
        )
    network.eval()
    return cfg, network, ckpt


ENSEMBLE_KEY = "weight_ensemble"  # what an ensembled checkpoint records: {"alpha", "fine_tuned"}


def ensemble_path(best: str | os.PathLike) -> Path:
    """Where :func:`write_weight_ensemble` puts the ensemble of checkpoint ``best``: beside it."""
    return Path(best).with_name(f"ensemble-{Path(best).name}")


def write_weight_ensemble(module: Any, best: str | os.PathLike) -> Path:
    """``model.weight_ensemble`` (WiSE-FT): the best checkpoint's fine-tuned weights ensembled with the
    pretrained ones that ``module`` kept, written to :func:`ensemble_path` (temp file, rename;
    the fine-tuned checkpoint is left as it is). Everything else in the file is the best checkpoint's."""
    best = Path(best)
    state = read_checkpoint(best)
    state["state_dict"] = module.ensemble_weights(state["state_dict"])
    state[ENSEMBLE_KEY] = {"alpha": float(module.config.weight_ensemble), "fine_tuned": best.name}
    return atomic_torch_save(state, ensemble_path(best))
