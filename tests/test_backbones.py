"""Backbone creation and weight loading (pure timm; HF_HUB_OFFLINE must be set for speed)."""

from __future__ import annotations

import os
from collections import OrderedDict

import pytest
import timm
import torch

from sketchquant.lightning_modules.components.backbones import (
    BackboneInfo,
    create_backbone,
    efficientnet_lite0_weights_path,
    get_backbone_info,
    map_state_dict_by_position,
)

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968}  # espresso, cup


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def lite0():
    return create_backbone("tf_efficientnet_lite0", weights="efficientnet_lite0").eval()


def test_lite0_mapping_loads_every_tensor():
    src = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    mapped = map_state_dict_by_position(src, model)
    assert list(mapped) == list(model.state_dict())  # none missing, none left over, same order
    result = model.load_state_dict(mapped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for (src_key, src_t), (dst_key, dst_t) in zip(src.items(), model.state_dict().items()):
        assert torch.equal(src_t.to(dst_t.dtype), dst_t), (src_key, dst_key)


def test_lite0_info(lite0):
    info = get_backbone_info(lite0)
    assert isinstance(info, BackboneInfo)
    assert info.weights_source == "efficientnet_lite0"
    assert info.has_imagenet_weights and info.has_imagenet_classifier
    assert info.num_features == 1280
    assert info.data_config["mean"] == (0.5, 0.5, 0.5) and info.data_config["std"] == (0.5, 0.5, 0.5)
    assert lite0.get_classifier().out_features == 1000


def test_auto_picks_lite0_offline():
    model = create_backbone("tf_efficientnet_lite0", weights="auto", num_classes=0)
    info = get_backbone_info(model)
    assert info.weights_source == "efficientnet_lite0"
    assert info.has_imagenet_weights and not info.has_imagenet_classifier
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 1280)


def test_position_mapping_names_first_mismatch():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    src = OrderedDict(a=torch.zeros(3, 4), b=torch.zeros(3), c=torch.zeros(2, 4), d=torch.zeros(2))
    with pytest.raises(ValueError, match=r"'c'.*\(2, 4\).*'1\.weight'.*\(2, 3\)"):
        map_state_dict_by_position(src, model)
    with pytest.raises(ValueError, match="left over in the source: \\['e'\\]"):
        map_state_dict_by_position({**model.state_dict(), "e": torch.zeros(1)}, model)
    short = OrderedDict(list(model.state_dict().items())[:3])
    with pytest.raises(ValueError, match="missing for the model: \\['1.bias'\\]"):
        map_state_dict_by_position(short, model)


def test_lite0_weights_only_for_lite0():
    with pytest.raises(ValueError, match="only fit backbone 'tf_efficientnet_lite0'"):
        create_backbone("test_efficientnet", weights="efficientnet_lite0")


def _classify(model, image, data_config) -> torch.Tensor:
    from PIL import Image

    transform = timm.data.create_transform(**data_config)
    x = transform(Image.fromarray(image)).unsqueeze(0)
    with torch.no_grad():
        return model(x).softmax(-1)[0]


@pytest.mark.parametrize(
    ("sample", "classes", "min_prob"),
    [("chelsea", CAT_CLASSES, 0.8), ("coffee", COFFEE_CLASSES, 0.8)],
)
def test_lite0_classifies_real_photos(lite0, sample, classes, min_prob):
    skimage_data = pytest.importorskip("skimage.data")
    probs = _classify(lite0, getattr(skimage_data, sample)(), get_backbone_info(lite0).data_config)
    top = int(probs.argmax())
    # measured: chelsea -> 282 tiger cat 0.39 (cat classes 0.92 together); coffee -> 967 espresso 0.95
    assert top in classes, (sample, top, float(probs[top]))
    assert float(probs[top]) > 0.3
    assert float(probs[sorted(classes)].sum()) > min_prob


def test_random_init_and_num_classes():
    model = create_backbone("test_efficientnet", weights="none", num_classes=7)
    info = get_backbone_info(model)
    assert info.weights_source == "none" and not info.has_imagenet_weights
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    feats = create_backbone("test_efficientnet", weights="none", num_classes=0)
    assert feats(torch.zeros(2, 3, 32, 32)).shape == (2, get_backbone_info(feats).num_features)


def test_auto_without_offline_weights_warns():
    with pytest.warns(UserWarning, match="no ImageNet weights"):
        model = create_backbone("test_efficientnet", weights="auto")
    assert get_backbone_info(model).weights_source == "none"


def test_hub_fails_fast_offline():
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE"):
        create_backbone("test_efficientnet", weights="hub")


def test_unknown_name_lists_close_names():
    with pytest.raises(ValueError, match="tf_efficientnet_lite0") as err:
        create_backbone("tf_efficientnet_lite", weights="none")
    assert "close names" in str(err.value)


def test_unknown_weights_source():
    with pytest.raises(ValueError, match="unknown weights 'imagenet'"):
        create_backbone("test_efficientnet", weights="imagenet")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_file_roundtrip(tmp_path, suffix):
    src = create_backbone("test_efficientnet", weights="none")
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    else:
        torch.save({"state_dict": src.state_dict()}, path)
    model = create_backbone("test_efficientnet", weights=str(path))
    info = get_backbone_info(model)
    assert info.weights_source == f"file:{path}" and info.has_imagenet_weights
    for k, v in src.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k


def test_weights_file_with_wrong_keys_names_them(tmp_path):
    sd = create_backbone("test_efficientnet", weights="none").state_dict()
    sd["extra.weight"] = torch.zeros(1)
    sd.pop("conv_stem.weight")
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError) as err:
        create_backbone("test_efficientnet", weights=path)
    msg = str(err.value)
    assert f"weights file {path} does not fit model 'test_efficientnet'" in msg
    assert "missing keys ['conv_stem.weight']" in msg and "unexpected keys ['extra.weight']" in msg


def test_weights_file_missing(tmp_path):
    with pytest.raises(FileNotFoundError):
        create_backbone("test_efficientnet", weights=os.fspath(tmp_path / "nope.pth"))
