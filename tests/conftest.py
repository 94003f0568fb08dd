"""Shared fixtures. The one definition of a tiny run (seconds on CPU) for each method lives here:
:data:`TINY` plus per-test extras through :func:`tiny_values` / :func:`tiny_overrides`."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

#: tiny models (timm test_* nets), 32 px images, a handful of classes, one short epoch
TINY: dict[str, dict[str, object]] = {
    # method B on an 8-class glyph benchmark (3 unseen) with timm's test_efficientnet
    "zs_sbir": {
        "model.backbone": "test_efficientnet",
        "model.weights": "none",
        "model.embed_dim": 32,
        "data.generator.num_classes": 8,
        "data.generator.num_unseen": 3,
        "data.generator.photos_per_class": 7,
        "data.generator.sketches_per_class": 7,
        "data.generator.image_size": 32,
        "data.image_size": 32,
        "data.batch_size": 12,
        "data.num_workers": 0,
        "eval.pq_k": 4,
        "eval.grid": "false",
        "trainer.max_epochs": 1,
        "trainer.limit_train_batches": 2,
    },
    # method A on multi-label glyph scenes with timm's test_resnet (stage -2 at 32 px: a 2×2 map)
    "quantization": {
        "model.backbone": "test_resnet",
        "model.weights": "none",
        "model.dim": 8,
        "model.feature_stage": -2,
        "model.kernel": "[1,1]",
        "model.stride": "[1,1]",
        "data.generator.num_classes": 5,
        "data.generator.image_size": 32,
        "data.image_size": 32,
        "data.batch_size": 16,
        "data.num_workers": 0,
        "eval.grid": "false",
        "trainer.max_epochs": 1,
        "trainer.limit_train_batches": 2,
    },
}
DATA_DIR = {"zs_sbir": "glyphs", "quantization": "scenes"}


def tiny_values(experiment: str, tmp=None, **extra) -> dict[str, object]:
    """The tiny run of ``experiment`` as ``{key: value}``; with ``tmp`` its data and runs go there."""
    values = dict(TINY[experiment])
    if tmp is not None:
        values.update({"data.root": f"{tmp}/{DATA_DIR[experiment]}", "run_dir": f"{tmp}/runs"})
    values.update(extra)
    return values


def tiny_overrides(experiment: str, tmp=None, **extra) -> list[str]:
    """:func:`tiny_values` as ``key=value`` overrides."""
    return [f"{k}={v}" for k, v in tiny_values(experiment, tmp, **extra).items()]


def tiny_zs_overrides(tmp, **extra) -> list[str]:
    return tiny_overrides("zs_sbir", tmp, **extra)


def initial_weights(cfg) -> dict:
    """The state dict a run of ``cfg`` starts from, built as ``sketchquant.app.train.train`` builds it
    (same seed, same order: data module, then module)."""
    import pytorch_lightning as pl  # lazy: conftest serves tests that import no Lightning

    from sketchquant.app.build import build_datamodule, build_module

    os.environ.pop("SKETCHQUANT_RUN_DIR", None)
    pl.seed_everything(cfg.seed, workers=True)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    return build_module(cfg, dm).state_dict()


@pytest.fixture
def tiny_zs(tmp_path):
    """``tiny_zs(**extra)`` → overrides of a tiny method-B run under ``tmp_path``."""
    return lambda **extra: tiny_zs_overrides(tmp_path, **extra)


@pytest.fixture
def tiny(tmp_path):
    """``tiny(experiment, **extra)`` → overrides of a tiny run of either method under ``tmp_path``."""
    return lambda experiment, **extra: tiny_overrides(experiment, tmp_path, **extra)
