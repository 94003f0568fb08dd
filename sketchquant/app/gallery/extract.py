"""Feature extraction through ``Trainer.predict``: one shard per process, merged by file position."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter, RichProgressBar

from sketchquant.app.gallery.records import GalleryError
from sketchquant.app.gallery.store import eval_transform
from sketchquant.core.io import atomic_savez
from sketchquant.datamodules.transforms import load_rgb

# --------------------------------------------------------------------------------------------------
# extraction through Trainer.predict


class _Files(torch.utils.data.Dataset):
    """``{"image", "ok", "pos"}``; an unreadable file gives a zero image and ``ok=False``."""

    def __init__(self, paths: Sequence[str], transform: Any, shape: tuple[int, int, int]) -> None:
        self.paths, self.transform, self.shape = list(paths), transform, shape

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, pos: int) -> dict:
        try:
            image, ok = self.transform(load_rgb(self.paths[pos])), True
        except Exception:  # noqa: BLE001 - any unreadable file is reported by name after extraction
            image, ok = torch.zeros(self.shape), False
        return {"image": image, "ok": ok, "pos": pos}


class _Extractor(pl.LightningModule):
    """A trained network whose ``predict_step`` returns its features with the file positions
    (module-level, so ``ddp_spawn`` can pickle it)."""

    def __init__(self, net: Any) -> None:
        super().__init__()
        self.net = net

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        feats = self.net(batch["image"])
        return {"feats": feats.detach().cpu(), "ok": batch["ok"].cpu(), "pos": batch["pos"].cpu()}


class _ShardWriter(BasePredictionWriter):
    """Each process writes its predictions to ``folder/shard-<rank>.npz`` (atomically), then waits for
    the others."""

    def __init__(self, folder: Path) -> None:
        super().__init__(write_interval="batch")
        self.folder = Path(folder)
        self.parts: dict[str, list] = {"feats": [], "ok": [], "pos": []}

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dl=0):
        for key in self.parts:
            self.parts[key].append(prediction[key].numpy())

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        arrays = {k: np.concatenate(v) if v else np.zeros(0) for k, v in self.parts.items()}
        atomic_savez(self.folder / f"shard-{trainer.global_rank}.npz", arrays)
        self.parts = {k: [] for k in self.parts}
        trainer.strategy.barrier("gallery-shards")


def extract_features(
    cfg: Any, module: Any, paths: list[str], folder: Path, *, batch_size: int, workers: int
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Features of ``paths`` in their order and the ``ok`` mask; the third value is False on the
    processes (ranks > 0) that only helped."""
    tf, size = eval_transform(cfg)
    ds = _Files(paths, tf, (3, *size))
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=torch.cuda.is_available()
    )
    folder.mkdir(parents=True, exist_ok=True)
    tr = cfg.trainer
    progress = sys.stdout.isatty()
    trainer = pl.Trainer(
        accelerator=tr.get("accelerator", "auto"),
        devices=tr.get("devices", "auto"),
        strategy=tr.get("strategy", "auto"),
        num_nodes=tr.get("num_nodes", 1),
        precision=tr.get("precision", "32-true"),
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        callbacks=[_ShardWriter(folder), *([RichProgressBar()] if progress else [])],
        default_root_dir=str(folder),
    )
    trainer.predict(_Extractor(module), dataloaders=loader, return_predictions=False)
    if trainer.global_rank != 0:
        return np.zeros(0), np.zeros(0, bool), False
    world = trainer.world_size
    shards = [folder / f"shard-{r}.npz" for r in range(world)]
    missing = [s.name for s in shards if not s.is_file()]
    if missing:
        raise GalleryError(f"extraction left no shard(s) {', '.join(missing)} in {folder}")
    parts = [dict(np.load(s)) for s in shards]
    pos = np.concatenate([p["pos"] for p in parts]).astype(np.int64)
    feats = np.concatenate([p["feats"] for p in parts])
    ok = np.concatenate([p["ok"] for p in parts]).astype(bool)
    order = np.argsort(pos, kind="stable")
    pos, feats, ok = pos[order], feats[order], ok[order]
    keep = np.ones(len(pos), bool)
    keep[1:] = pos[1:] != pos[:-1]  # DistributedSampler padding repeats samples
    pos, feats, ok = pos[keep], feats[keep], ok[keep]
    if not np.array_equal(pos, np.arange(len(paths))):
        raise GalleryError(f"the shards hold {len(pos)} of {len(paths)} images")
    for s in shards:
        s.unlink(missing_ok=True)
    return feats, ok, True
