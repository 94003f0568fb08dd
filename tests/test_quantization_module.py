"""QuantizationModule: it learns, α(t) from the AlphaRamp callback reaches it, validation logs both
embeddings' retrieval metrics."""

from __future__ import annotations

import csv
import os

import pytest
import torch
from conftest import tiny_overrides

pytestmark = pytest.mark.filterwarnings("ignore")

NUM_CLASSES = 5


def _module(**kw):
    from sketchquant.lightning_modules.quantization import QuantizationModule

    config = dict(
        backbone="test_resnet",
        weights="none",
        feature_stage=-2,
        kernel=[1, 1],
        stride=[1, 1],
        dim=8,
        bits=8,
        optim={"name": "adam", "lr": 1e-2, "weight_decay": 0.0, "schedule": "none"},
    )
    config.update(kw)
    return QuantizationModule(config, num_classes=NUM_CLASSES, multi_label=True, image_size=32, max_epochs=1)


def _batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, NUM_CLASSES, generator=g) < 0.3).float()
    labels[torch.arange(n), torch.randint(0, NUM_CLASSES, (n,), generator=g)] = 1.0
    return {
        "image": torch.randn(n, 3, 32, 32, generator=g),
        "label": labels,
        "domain": torch.zeros(n, dtype=torch.long),
        "index": torch.arange(n),
    }


def test_training_steps_lower_the_loss():
    torch.manual_seed(0)
    module = _module()
    module.train()
    opt = module.configure_optimizers()
    batch = _batch()
    losses = []
    for _ in range(20):
        out = module._common_step(batch, "train")
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"]))
    assert losses[-1] < 0.7 * losses[0], losses


def test_alpha_weights_the_quantization_term():
    torch.manual_seed(0)
    module = _module()
    module.eval()
    batch = _batch()
    module.alpha = 0.0
    out0 = module._common_step(batch, "train")
    module.alpha = 3.0
    out3 = module._common_step(batch, "train")
    assert torch.isclose(out0["loss"], out0["losses"]["cls"])
    assert torch.isclose(out3["loss"], out3["losses"]["cls"] + 3.0 * out3["losses"]["quant"])
    assert float(out3["losses"]["quant"]) > 0


def test_quant_penalty_pulls_activations_to_integers():
    torch.manual_seed(0)
    module = _module()
    module.train()
    module.alpha = 10.0
    opt = module.configure_optimizers()
    batch = _batch()
    quant = []
    for _ in range(15):
        out = module._common_step(batch, "train")
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        quant.append(float(out["losses"]["quant"]))
    assert quant[-1] < quant[0], quant


def test_fit_alpha_ramp_reaches_module_and_val_logs_both_embeddings(tmp_path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")
    from sketchquant.app.build import build_datamodule, build_module, build_trainer
    from sketchquant.app.methods import compose
    from sketchquant.callbacks.alpha_ramp import alpha_schedule

    epochs = 3
    cfg = compose(
        "quantization",
        tiny_overrides(
            "quantization",
            tmp_path,
            **{
                "model.alpha.final": 2.0,
                "model.alpha.t1": 0,
                "model.alpha.t2": 4,
                "data.generator.num_train": 32,
                "data.generator.num_query": 8,
                "data.generator.num_database": 24,
                "trainer.max_epochs": epochs,
                "trainer.limit_train_batches": 1.0,
                "trainer.log_every_n_steps": 1,
                "trainer.enable_progress_bar": "false",
            },
        ),
    )
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    module = build_module(cfg, dm)
    run_dir = tmp_path / "run"
    trainer = build_trainer(cfg, run_dir)
    trainer.fit(module, datamodule=dm)
    a = cfg.model.alpha
    expect = alpha_schedule(epochs - 1, alpha_final=a.final, t1=a.t1, t2=a.t2, shape=a.shape)
    assert expect == pytest.approx(1.0)  # 2.0 · (2 − 0) / (4 − 0): mid-ramp, not a trivial 0 or α_f
    assert module.alpha == pytest.approx(expect)
    # the logged α follows the ramp epoch by epoch
    with open(run_dir / "metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("train/alpha")]
    by_epoch = {int(r["epoch"]): float(r["train/alpha"]) for r in rows}
    assert by_epoch == {
        e: pytest.approx(alpha_schedule(e, alpha_final=2.0, t1=0, t2=4)) for e in range(epochs)
    }
    logged = trainer.callback_metrics
    for key in ("val/codes/map_1000", "val/float/map_1000", "val/codes/map_all", "val/float/map_all"):
        assert key in logged and 0.0 <= float(logged[key]) <= 1.0, key
