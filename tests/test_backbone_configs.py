"""The configs for today's backbones compose, resolve their own normalisation, and build — offline, on tiny
random models of the same families (timm's ``test_vit`` for ViTs, ``legacy_seresnet18`` for SE-ResNets)."""

from __future__ import annotations

import pytest
import torch

from sketchquant.app.build import datamodule_kwargs
from sketchquant.app.methods import compose
from sketchquant.lightning_modules.components.sketch_net import SketchNet


@pytest.mark.parametrize(
    "model, backbone, mean",
    [
        ("zs_sbir_seresnet50", "legacy_seresnet50", (0.485, 0.456, 0.406)),
        ("zs_sbir_clip_vit", "vit_base_patch16_clip_224.openai_ft_in1k", (0.48145466, 0.4578275, 0.40821073)),
    ],
)
def test_backbone_config_composes_with_its_normalisation(model, backbone, mean):
    cfg = compose("zs_sbir_sketchy", [f"model={model}", "data.root=/data"])
    assert cfg.model.backbone == backbone and cfg.model.head_init == "svd"
    kwargs = datamodule_kwargs(cfg)
    assert kwargs["image_size"] == 224 and kwargs["mean"] == pytest.approx(mean)


@pytest.mark.parametrize("backbone, size", [("test_vit", 160), ("legacy_seresnet18", 64)])
def test_same_family_builds_with_svd_head_and_teacher(backbone, size):
    torch.manual_seed(0)
    net = SketchNet(4, backbone, weights="none", embed_dim=32, head_init="svd")
    assert net.head_init == "svd" and net.imagenet_head.out_features == 1000
    teacher = net.make_teacher()  # as the module does: before any forward pass
    net.eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        out = net(x)
        g = net.pool(x)
        # at initialisation head(embed(g)) is the best rank-32 approximation of the 1000-way classifier
        full = net.imagenet_classifier(g)
    assert out.features.shape == (2, 32) and out.logits.shape == (2, 4)
    assert torch.linalg.matrix_rank(net.imagenet_head.weight @ net.embedding.weight) <= 32
    assert out.imagenet_logits.shape == full.shape == (2, 1000)
    with torch.no_grad():
        assert torch.allclose(teacher(x), full, atol=1e-5)
