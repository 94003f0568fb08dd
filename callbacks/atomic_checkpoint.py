"""Checkpoint writing that never leaves a half-written file and never costs the previous checkpoint.

A checkpoint goes to a temporary file in the same folder, is fsynced and renamed into place
(:func:`sketchquant.core.io.atomic_path`); a full disk raises :class:`~sketchquant.core.io.DiskFullError`
naming the file, with the previous file intact. For the names in ``keep_previous`` (``last.ckpt``) the
file being replaced is kept as ``last.prev.ckpt``, so even a bad write that *succeeds* (a file truncated
later by a broken disk or copy) leaves ``resume=auto`` a good checkpoint to fall back to.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from sketchquant.core.io import atomic_path, atomic_torch_save

__all__ = ["AtomicCheckpointIO", "atomic_torch_save", "previous_path"]


def previous_path(path: str | os.PathLike) -> Path:
    """``.../last.ckpt`` → ``.../last.prev.ckpt``: where the replaced checkpoint is kept."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _keep_previous(path: Path) -> None:
    """Make ``path`` also available as :func:`previous_path` (a hard link: ``path`` never disappears;
    a rename where links are not supported)."""
    if not path.is_file():
        return
    prev = previous_path(path)
    tmp = prev.with_name(f".{prev.name}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
        os.replace(tmp, prev)
    except OSError:
        tmp.unlink(missing_ok=True)
        os.replace(path, prev)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose ``save_checkpoint`` writes atomically (local paths) and keeps the
    replaced ``last.ckpt`` as ``last.prev.ckpt``."""

    def __init__(self, keep_previous: tuple[str, ...] = ("last.ckpt",)) -> None:
        super().__init__()
        self.keep_previous = tuple(keep_previous)

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # remote filesystems: leave to Lightning
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)
            if path.name in self.keep_previous:  # the new file is complete: now keep the old one
                _keep_previous(path)
