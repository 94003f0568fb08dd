"""``model.head_warmup_epochs`` (LP-FT): in the warm-up epochs only the two heads learn; the trunk, the
embedding and the trunk's BatchNorm statistics stay exactly as they started, and train afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import initial_weights

from sketchquant.app.checkpoints import read_checkpoint
from sketchquant.app.methods import compose
from sketchquant.app.train import train
from sketchquant.lightning_modules.components.sketch_net import SketchNet

HEADS = ("net.classifier.", "net.imagenet_head.")


def test_frozen_features_send_gradient_to_the_heads_only():
    torch.manual_seed(0)
    net = SketchNet(num_seen=5, backbone="test_efficientnet", weights="none", embed_dim=16)
    out = net(torch.randn(4, 3, 32, 32), frozen_features=True)
    assert not out.features.requires_grad
    (out.logits.sum() + out.imagenet_logits.sum()).backward()
    for name, p in net.named_parameters():
        if name.startswith(("classifier.", "imagenet_head.")):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    plain = net(torch.randn(4, 3, 32, 32))
    assert plain.features.requires_grad


def _run(tiny_zs, monkeypatch, name, **extra):
    monkeypatch.delenv("SKETCHQUANT_RUN_DIR", raising=False)
    cfg = compose("zs_sbir", tiny_zs(name=name, **{"model.head_warmup_epochs": 1, **extra}))
    out = train(cfg)
    initial = initial_weights(cfg)  # the weights before training, built as train() builds them
    last = read_checkpoint(Path(out["run_dir"]) / "checkpoints" / "last.ckpt")["state_dict"]
    return initial, last


def _changed(initial: dict, last: dict, prefixes: tuple[str, ...]) -> set[str]:
    return {k for k, v in last.items() if k.startswith(prefixes) and not torch.equal(v, initial[k])}


def test_warmup_epoch_trains_the_heads_only(tiny_zs, monkeypatch):
    initial, last = _run(tiny_zs, monkeypatch, "warm", **{"trainer.max_epochs": 1})
    frozen = ("net.backbone.", "net.embedding.")
    assert _changed(initial, last, frozen) == set()  # weights and BatchNorm statistics (freeze_bn off)
    assert any(k.startswith("net.backbone.") and "running_mean" in k for k in initial)
    assert {"net.classifier.weight", "net.imagenet_head.weight"} <= _changed(initial, last, HEADS)


@pytest.mark.slow
def test_after_warmup_everything_trains(tiny_zs, monkeypatch):
    initial, last = _run(tiny_zs, monkeypatch, "after", **{"trainer.max_epochs": 2})
    changed = _changed(initial, last, ("net.backbone.", "net.embedding."))
    assert "net.embedding.weight" in changed and "net.backbone.conv_stem.weight" in changed
    assert any("running_mean" in k for k in changed)  # BatchNorm back in training mode after the warm-up
