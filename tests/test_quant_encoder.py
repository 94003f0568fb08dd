import pytest
import torch
from torch import nn

from sketchquant.lightning_modules.components.irelu import quantization_loss
from sketchquant.lightning_modules.components.quant_encoder import (
    PerWindowLinear,
    QuantizationEncoder,
    QuantOutput,
    classification_loss,
)


def test_grouped_fc_equals_separate_linears():
    torch.manual_seed(0)
    linears = [nn.Linear(6, 4) for _ in range(3)]
    grouped = PerWindowLinear.from_linears(linears, relu=True)
    x = torch.randn(5, 3, 6)
    expected = torch.stack([torch.relu(lin(x[:, p])) for p, lin in enumerate(linears)], dim=1)
    assert torch.allclose(grouped(x), expected, atol=1e-6)
    no_relu = PerWindowLinear.from_linears(linears, relu=False)
    expected = torch.stack([lin(x[:, p]) for p, lin in enumerate(linears)], dim=1)
    assert torch.allclose(no_relu(x), expected, atol=1e-6)
    # round trip and a single grouped conv
    back = grouped.window_linear(1)
    assert torch.equal(back.weight, linears[1].weight) and torch.equal(back.bias, linears[1].bias)
    assert grouped.conv.groups == 3 and grouped.conv.weight.shape == (12, 6, 1)


def test_per_window_linear_windows_are_independent():
    m = PerWindowLinear(4, 3, 2, relu=False)
    x = torch.randn(2, 4, 3, requires_grad=True)
    m(x)[:, 2].sum().backward()
    assert x.grad[:, [0, 1, 3]].abs().sum() == 0 and x.grad[:, 2].abs().sum() > 0
    with pytest.raises(ValueError, match="B×4×3"):
        m(torch.randn(2, 3, 3))


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    # test_resnet at 64 px: last stage is 96 × 2 × 2 -> kernel 1 stride 1 gives 4 windows
    return QuantizationEncoder(
        backbone="test_resnet", kernel=1, stride=1, dim=8, bits=8, num_classes=5, image_size=64
    )


def test_encoder_shapes_and_dtypes(encoder):
    assert encoder.feature_channels == 96 and encoder.feature_hw == (2, 2)
    assert encoder.num_windows == 4 and encoder.code_bytes == 32 and encoder.code_bits == 256
    assert encoder.window_boxes() == [(0, 0, 1, 1), (0, 1, 1, 2), (1, 0, 2, 1), (1, 1, 2, 2)]
    x = torch.randn(3, 3, 64, 64)
    out = encoder(x)
    assert isinstance(out, QuantOutput)
    assert out.continuous.shape == (3, 4, 8) and out.continuous.dtype == torch.float32
    assert out.codes.shape == (3, 4, 8) and out.logits.shape == (3, 4, 5)
    assert (out.continuous >= 0).all()
    assert torch.equal(out.codes, out.codes.round().clamp(0, 255))
    encoder.eval()
    codes = encoder.encode(x)
    assert codes.dtype == torch.uint8 and codes.shape == (3, encoder.code_bytes)
    feats = encoder.float_features(x)
    assert feats.shape == (3, 32) and feats.dtype == torch.float32
    assert torch.equal(codes.float(), feats.round().clamp(0, 255))
    encoder.train()


def test_codes_within_range_low_bits():
    enc = QuantizationEncoder(
        backbone="test_resnet", window="global", dim=16, bits=2, num_classes=3, image_size=32
    )
    assert enc.num_windows == 1
    with torch.no_grad():
        enc.fc.conv.weight.mul_(50.0)  # large activations: many codes hit the top value
    codes = enc.eval().encode(torch.randn(4, 3, 32, 32))
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 3 and int(codes.min()) >= 0
    assert int(codes.max()) == 3


def test_stripes_and_sliding_window_counts():
    enc = QuantizationEncoder(
        backbone="test_resnet",
        feature_stage=-2,
        window="sliding",
        kernel=2,
        stride=1,
        dim=4,
        num_classes=2,
        image_size=64,
    )
    assert enc.feature_hw == (4, 4) and enc.feature_channels == 192 and enc.num_windows == 9
    enc = QuantizationEncoder(
        backbone="test_resnet",
        feature_stage=-2,
        window="stripes",
        num_stripes=4,
        dim=4,
        num_classes=2,
        image_size=64,
        per_window_classifier=True,
    )
    assert enc.num_windows == 4 and isinstance(enc.classifier, PerWindowLinear)
    assert enc(torch.randn(2, 3, 64, 64)).logits.shape == (2, 4, 2)


def test_window_larger_than_feature_map():
    with pytest.raises(ValueError, match=r"kernel \(3, 3\).*\(2, 2\)"):
        QuantizationEncoder(backbone="test_resnet", kernel=3, num_classes=2, image_size=64)


def test_input_size_mismatch(encoder):
    with pytest.raises(ValueError, match="image_size"):
        encoder(torch.randn(1, 3, 96, 96))


def test_backbone_module_features_only_and_classifier():
    import timm

    feat = timm.create_model("test_resnet", pretrained=False, features_only=True)
    enc = QuantizationEncoder(backbone_module=feat, kernel=1, dim=4, num_classes=2, image_size=64)
    assert enc.feature_channels == 96 and enc.num_windows == 4
    clf = timm.create_model("test_resnet", pretrained=False)
    bn_mean = clf.bn1.running_mean.clone()
    enc = QuantizationEncoder(
        backbone_module=clf, feature_stage=-2, kernel=2, dim=4, num_classes=2, image_size=64
    )
    assert enc.feature_channels == 192 and enc.num_windows == 9
    assert torch.equal(clf.bn1.running_mean, bn_mean)  # the dummy forward ran in eval mode
    out = enc(torch.randn(2, 3, 64, 64))
    assert out.codes.shape == (2, 9, 4)
    # the unused last stage and the ImageNet head were pruned: every parameter gets a gradient
    (out.logits.sum() + out.continuous.sum()).backward()
    assert all(p.grad is not None for p in enc.parameters())
    assert not list(clf.layer4.parameters()) and isinstance(clf.fc, nn.Identity)


def test_classification_loss():
    logits = torch.randn(2, 3, 4)
    labels = torch.tensor([1, 3])
    expected = torch.stack([torch.nn.functional.cross_entropy(logits[:, p], labels) for p in range(3)]).mean()
    assert torch.allclose(classification_loss(logits, labels, multi_label=False), expected)
    multi = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = torch.stack([bce(logits[:, p], multi.float()) for p in range(3)]).mean()
    assert torch.allclose(classification_loss(logits, multi, multi_label=True), expected)
    with pytest.raises(ValueError, match="multi-hot"):
        classification_loss(logits, labels, multi_label=True)


def test_tiny_optimisation_lowers_loss():
    torch.manual_seed(0)
    # 32 px, second-to-last stage: 192 × 2 × 2 map, kernel 1 -> 4 windows (cheap)
    enc = QuantizationEncoder(
        backbone="test_resnet", feature_stage=-2, kernel=1, dim=8, bits=8, num_classes=3, image_size=32
    )
    assert enc.num_windows == 4
    x = torch.randn(8, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    opt = torch.optim.Adam(enc.parameters(), lr=1e-2)
    alpha = 1.0

    def loss_fn():
        out = enc(x)
        return classification_loss(out.logits, y, multi_label=False) + alpha * quantization_loss(
            out.continuous
        )

    enc.train()
    first = loss_fn().item()
    for _ in range(20):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    assert loss_fn().item() < first
