"""Shared fixtures: tiny configs that train in seconds on CPU."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


def tiny_zs_overrides(tmp, **extra) -> list[str]:
    """Method B on an 8-class glyph benchmark at 32 px with timm's test_efficientnet."""
    out = {
        "model.backbone": "test_efficientnet",
        "model.weights": "none",
        "model.embed_dim": "32",
        "data.root": f"{tmp}/glyphs",
        "data.generator.num_classes": "8",
        "data.generator.num_unseen": "3",
        "data.generator.photos_per_class": "7",
        "data.generator.sketches_per_class": "7",
        "data.generator.image_size": "32",
        "data.image_size": "32",
        "data.batch_size": "12",
        "data.num_workers": "0",
        "eval.pq_k": "4",
        "eval.grid": "false",
        "trainer.max_epochs": "1",
        "trainer.limit_train_batches": "2",
        "run_dir": f"{tmp}/runs",
    }
    out.update({k: str(v) for k, v in extra.items()})
    return [f"{k}={v}" for k, v in out.items()]


@pytest.fixture
def tiny_zs(tmp_path):
    return lambda **extra: tiny_zs_overrides(tmp_path, **extra)
