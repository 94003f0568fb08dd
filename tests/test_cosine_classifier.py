"""``model.classifier=cosine``: the seen-class head as normalised softmax (``cos(f, w_k) / T``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sketchquant.app.checkpoints import load_network, read_checkpoint
from sketchquant.app.methods import compose
from sketchquant.app.train import train
from sketchquant.core.schema import ConfigError
from sketchquant.lightning_modules.components.sketch_net import CosineClassifier, SketchNet


def test_logits_by_hand():
    head = CosineClassifier(2, 2, temperature=0.05)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    # f = (3, 4): cos with (1, 0) is 0.6, with (0, 2) 0.8; divided by T = 0.05
    logits = head(torch.tensor([[3.0, 4.0]]))
    assert torch.allclose(logits, torch.tensor([[12.0, 16.0]]))


def test_length_of_the_feature_neither_changes_logits_nor_takes_gradient():
    torch.manual_seed(0)
    head = CosineClassifier(8, 5, temperature=0.1)
    f = torch.randn(3, 8, requires_grad=True)
    assert torch.allclose(head(f), head(7.5 * f), atol=1e-5)
    torch.nn.functional.cross_entropy(head(f), torch.tensor([0, 3, 4])).backward()
    # the loss sees directions only: its gradient is orthogonal to each feature
    radial = (f.grad * f.detach()).sum(dim=1) / f.detach().norm(dim=1)
    assert radial.abs().max() < 1e-5 and f.grad.abs().max() > 1e-3


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="model.classifier_temperature must be > 0, got 0"):
        CosineClassifier(4, 2, temperature=0)
    with pytest.raises(ValueError, match="model.classifier must be 'linear' or 'cosine', got 'arc'"):
        SketchNet(num_seen=2, backbone="test_efficientnet", weights="none", embed_dim=8, classifier="arc")


def test_cosine_net_has_no_classifier_bias():
    net = SketchNet(
        num_seen=3, backbone="test_efficientnet", weights="none", embed_dim=8, classifier="cosine"
    )
    names = {n for n, _ in net.named_parameters() if n.startswith("classifier.")}
    assert names == {"classifier.weight"}
    assert net(torch.randn(2, 3, 32, 32)).logits.abs().max() <= 1 / 0.05 + 1e-4


def test_a_cosine_run_trains_saves_and_loads_for_search(tiny_zs, monkeypatch):
    monkeypatch.delenv("SKETCHQUANT_RUN_DIR", raising=False)
    cfg = compose(
        "zs_sbir", tiny_zs(name="cosine", **{"model.classifier": "cosine", "trainer.max_epochs": 1})
    )
    out = train(cfg)
    path = Path(out["run_dir"]) / "checkpoints" / "last.ckpt"
    state = read_checkpoint(path)["state_dict"]
    assert "net.classifier.weight" in state and "net.classifier.bias" not in state
    run_cfg, network, _ = load_network(path)
    assert run_cfg.model.classifier == "cosine"
    assert isinstance(network.net.classifier, CosineClassifier)
    assert torch.equal(network.net.classifier.weight, state["net.classifier.weight"])


def test_unknown_classifier_fails_before_any_work(tiny_zs):
    with pytest.raises(ConfigError, match="'model.classifier' is 'arcface' expected one of: linear, cosine"):
        compose("zs_sbir", tiny_zs(name="bad", **{"model.classifier": "arcface"}))
