"""SketchNet: shapes, SVD initialisation of embedding + ImageNet head, frozen teacher."""

from __future__ import annotations

import pytest
import torch

from sketchquant.lightning_modules.components.sketch_net import (
    FrozenTeacher,
    SketchNet,
    SketchNetOutput,
    make_teacher,
    svd_split_classifier,
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def lite0_net():
    torch.manual_seed(0)
    return SketchNet(num_seen=5, backbone="tf_efficientnet_lite0", weights="efficientnet_lite0")


def test_shapes_tiny_random():
    net = SketchNet(num_seen=7, backbone="test_efficientnet", weights="none", embed_dim=32)
    out = net(torch.randn(3, 3, 64, 64))
    assert isinstance(out, SketchNetOutput)
    assert (
        out.features.shape == (3, 32)
        and out.logits.shape == (3, 7)
        and out.imagenet_logits.shape == (3, 1000)
    )
    assert net.head_init == "random" and not net.backbone_info.has_imagenet_weights
    assert net.extract_features(torch.randn(2, 3, 64, 64)).shape == (2, 32)
    no_head = SketchNet(
        num_seen=7, backbone="test_efficientnet", weights="none", embed_dim=32, imagenet_head=False
    )
    assert no_head(torch.randn(1, 3, 64, 64)).imagenet_logits is None


def test_lite0_shapes_and_svd_init(lite0_net):
    net = lite0_net.eval()
    assert net.head_init == "svd" and net.num_features == 1280
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = net(x)
        assert out.features.shape == (2, 512) and out.logits.shape == (2, 5)
        # rank-512 approximation of the ImageNet classifier: close to the teacher's logits
        teacher_logits = net.make_teacher()(x)
    # measured 0.24 here (0.23 on real photos); the discarded singular values hold 0.32 of W's norm
    err = (out.imagenet_logits - teacher_logits).norm() / teacher_logits.norm()
    assert err < 0.35


def test_svd_reconstruction_exact_when_d_equals_c():
    torch.manual_seed(0)
    net = SketchNet(num_seen=3, backbone="test_efficientnet", weights="none", head_init="svd", embed_dim=256)
    assert net.num_features == 256 and net.head_init == "svd"
    w, b = net.imagenet_classifier.weight, net.imagenet_classifier.bias
    g = torch.randn(4, 256)
    with torch.no_grad():
        recon = net.imagenet_head(net.embedding(g))
        assert torch.allclose(recon, g @ w.T + b, atol=1e-4)
        assert torch.allclose(net.imagenet_head.weight @ net.embedding.weight, w, atol=1e-5)
        assert torch.count_nonzero(net.embedding.bias) == 0
        # end to end, the student's ImageNet head equals the teacher
        x = torch.randn(2, 3, 32, 32)
        net.eval()
        with pytest.warns(UserWarning, match="no ImageNet weights"):
            teacher = net.make_teacher()
        assert torch.allclose(net(x).imagenet_logits, teacher(x), atol=1e-4)


def test_svd_split_shapes_and_truncation():
    torch.manual_seed(1)
    w, b = torch.randn(10, 6), torch.randn(10)
    emb_w, emb_b, head_w, head_b = svd_split_classifier(w.double(), b, 4)
    assert emb_w.shape == (4, 6) and head_w.shape == (10, 4) and torch.equal(head_b, b.double())
    assert emb_b.shape == (4,) and torch.count_nonzero(emb_b) == 0
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    best = u[:, :4] @ torch.diag(s[:4]) @ vh[:4]  # Eckart-Young: best rank-4 approximation
    assert torch.allclose(head_w @ emb_w, best, atol=1e-10)
    # head columns are orthonormal (U), the singular values sit in the embedding (as SAKE)
    assert torch.allclose(head_w.T @ head_w, torch.eye(4, dtype=torch.float64), atol=1e-10)
    # d larger than the rank: extra rows are placeholders, their head columns are zero
    emb_w, _, head_w, _ = svd_split_classifier(w.double(), b, 8)
    assert torch.isnan(emb_w[6:]).all() and torch.count_nonzero(head_w[:, 6:]) == 0


def test_embed_dim_above_rank_keeps_exact_product():
    torch.manual_seed(2)
    net = SketchNet(num_seen=3, backbone="test_convnext", weights="none", head_init="svd", embed_dim=100)
    assert net.num_features == 64
    assert torch.isfinite(net.embedding.weight).all()
    assert net.embedding.weight[64:].abs().sum() > 0  # default init, not zeros
    with torch.no_grad():
        w = net.imagenet_classifier.weight
        assert torch.allclose(net.imagenet_head.weight @ net.embedding.weight, w, atol=1e-5)


def test_teacher_is_frozen_and_stays_eval(lite0_net):
    teacher = lite0_net.make_teacher()
    assert isinstance(teacher, FrozenTeacher)
    assert all(not p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert teacher(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    # it is a copy: the student's parameters are separate
    assert all(p.requires_grad for p in lite0_net.parameters())
    assert not any(p is q for p in teacher.parameters() for q in lite0_net.parameters())
    # the original classifier is not part of the student's state dict
    assert not any("_imagenet_classifier" in k for k in lite0_net.state_dict())


def test_make_teacher_after_training_refuses():
    net = SketchNet(num_seen=2, backbone="test_efficientnet", weights="none", embed_dim=16)
    with torch.no_grad():
        next(net.backbone.parameters()).add_(1.0)
    with pytest.raises(RuntimeError, match="before training"):
        net.make_teacher()


def test_make_teacher_function():
    model = torch.nn.Linear(3, 2)
    teacher = make_teacher(model)
    assert teacher.net is not model and not teacher.training
    x = torch.randn(4, 3, requires_grad=True)
    assert not teacher(x).requires_grad


def test_bad_head_init():
    with pytest.raises(ValueError, match="head_init"):
        SketchNet(num_seen=2, backbone="test_efficientnet", weights="none", head_init="pca")


def test_freeze_bn_keeps_the_trunks_statistics_through_a_real_fit():
    """``model.freeze_bn``: after two steps of ``Trainer.fit`` (which never calls ``train()`` before the first
    epoch) the trunk's BatchNorm running statistics are unchanged, while its affine weights and the new
    layers moved; without it the statistics follow the batches."""
    import pytorch_lightning as pl

    from sketchquant.lightning_modules.config import OptimConfig, ZeroShotModelConfig
    from sketchquant.lightning_modules.zero_shot_sketch import ZeroShotSketchModule

    batch = {
        "image": torch.randn(6, 3, 32, 32) * 3 + 1,
        "label": torch.tensor([0, 1, 2, 0, 1, 2]),
        "domain": torch.tensor([0, 0, 0, 1, 1, 1]),
        "index": torch.arange(6),
    }

    def fit(freeze: bool) -> tuple[dict, dict]:
        torch.manual_seed(0)
        cfg = ZeroShotModelConfig(
            backbone="test_efficientnet",
            weights="none",
            embed_dim=16,
            lambda_kd=0.0,
            freeze_bn=freeze,
            optim=OptimConfig(lr=1e-2, schedule="none"),
        )
        module = ZeroShotSketchModule(cfg, num_classes=3, inference=True)
        before = {k: v.clone() for k, v in module.state_dict().items()}
        trainer = pl.Trainer(
            max_steps=2,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([batch, batch], batch_size=None))
        return before, module.state_dict()

    before, after = fit(freeze=True)
    stats = [k for k in after if k.startswith("net.backbone") and k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(after[k], before[k]) for k in stats)
    assert not torch.equal(after["net.embedding.weight"], before["net.embedding.weight"])
    bn_weights = [k for k in after if k.startswith("net.backbone") and k.endswith("bn1.weight")]
    assert any(not torch.equal(after[k], before[k]) for k in bn_weights)
    before, after = fit(freeze=False)  # the default: the statistics follow the batches
    assert any(not torch.equal(after[k], before[k]) for k in stats)


def test_frozen_trunk_trains_only_the_later_layers():
    from sketchquant.lightning_modules.config import ZeroShotModelConfig
    from sketchquant.lightning_modules.zero_shot_sketch import ZeroShotSketchModule

    cfg = ZeroShotModelConfig(backbone="test_efficientnet", weights="none", embed_dim=16, frozen_trunk=0.5)
    module = ZeroShotSketchModule(cfg, num_classes=3, inference=True)
    trunk = [p for n, p in module.named_parameters() if n.startswith("net.backbone.")]
    frozen = [p for p in trunk if not p.requires_grad]
    assert len(frozen) == round(len(trunk) * 0.5) and all(not p.requires_grad for p in trunk[: len(frozen)])
    assert all(p.requires_grad for n, p in module.named_parameters() if not n.startswith("net.backbone."))
    trained = {id(p) for g in module.param_groups(1.0) for p in g["params"]}
    assert not trained & {id(p) for p in frozen}
    module.train()
    bns = [
        m
        for n, m in module.named_modules()
        if n.startswith("net.backbone") and isinstance(m, torch.nn.BatchNorm2d)
    ]
    assert any(not m.training for m in bns) and any(
        m.training for m in bns
    )  # frozen ones keep their statistics
    with pytest.raises(ValueError, match="frozen_trunk must be in"):
        ZeroShotSketchModule(
            ZeroShotModelConfig(backbone="test_efficientnet", weights="none", frozen_trunk=2), 3
        )
