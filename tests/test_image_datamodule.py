"""ImageDataModule (method A): CSV and folder layouts, multi-label parsing, bad input, transforms."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from datamodules.common import BadImageWarning
from datamodules.glyphs import make_glyph_scenes
from datamodules.images import ImageDataModule, read_label_csv
from datamodules.transforms import build_eval_transform, build_train_transform, load_rgb
from sketchquant.core.batch import GALLERY, QUERY

KW = dict(image_size=32, batch_size=4, num_workers=0)


def _png(path: Path, value: int = 128, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (8, 8), value if mode != "RGB" else (value,) * 3).save(path)


@pytest.fixture
def csv_root(tmp_path) -> Path:
    root = tmp_path / "set"
    for i in range(10):
        _png(root / "images" / f"{i}.png", 20 * i)
    (root / "train.csv").write_text(
        "path,labels\nimages/0.png,a;b\nimages/1.png,c\nimages/2.png,b\nimages/3.png,a\nimages/4.png,\n"
    )
    (root / "query.csv").write_text("images/5.png,a\nimages/6.png,b;c\n")
    (root / "database.csv").write_text("# database\nimages/7.png,c\n\nimages/8.png,a;c\nimages/9.png,b\n")
    return root


def test_csv_parsing(csv_root):
    rows = read_label_csv(csv_root / "train.csv", csv_root)
    assert [r[1] for r in rows] == [["a", "b"], ["c"], ["b"], ["a"], []]  # header skipped
    assert rows[0][0] == str(csv_root / "images/0.png")


def test_multi_label_csv(csv_root):
    dm = ImageDataModule(str(csv_root), **KW)
    dm.setup()
    assert dm.multi_label and dm.class_names == ["a", "b", "c"] and dm.num_classes == 3
    s = dm.datasets["train"][0]
    assert s["label"].dtype == torch.float32 and s["label"].tolist() == [1.0, 1.0, 0.0]
    assert dm.datasets["train"][4]["label"].sum() == 0
    val = list(dm.val_dataloader())
    dom = torch.cat([b["domain"] for b in val])
    assert dom.tolist() == [QUERY] * 2 + [GALLERY] * 3
    idx = torch.cat([b["index"] for b in val]).tolist() + dm.datasets["train"].indices.tolist()
    assert sorted(idx) == list(range(10))
    assert dm.path_for_index(val[0]["index"][0]).endswith("5.png")
    assert len(list(dm.test_dataloader())) == len(val)
    assert sum(len(b["index"]) for b in dm.train_dataloader()) == 4  # drop_last with 5 images, batch 4


def test_classes_txt_order_and_unknown_label(csv_root):
    (csv_root / "classes.txt").write_text("c\nb\na\nd\n")
    dm = ImageDataModule(str(csv_root), **KW)
    dm.setup()
    assert dm.class_names == ["c", "b", "a", "d"] and dm.datasets["train"][1]["label"].tolist() == [
        1,
        0,
        0,
        0,
    ]
    (csv_root / "classes.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match=r"label\(s\) \['c'\] are not in .*classes.txt"):
        ImageDataModule(str(csv_root), **KW).setup()


def test_single_label_csv_and_forced_modes(csv_root):
    (csv_root / "train.csv").write_text("images/0.png,a\nimages/1.png,c\n")
    (csv_root / "query.csv").write_text("images/5.png,a\n")
    (csv_root / "database.csv").write_text("images/7.png,c\nimages/9.png,b\n")
    dm = ImageDataModule(str(csv_root), **KW)
    dm.setup()
    assert not dm.multi_label and dm.datasets["eval"][2]["label"].dtype == torch.int64
    assert dm.datasets["eval"][2]["label"].item() == dm.class_names.index("b")
    forced = ImageDataModule(str(csv_root), multi_label=True, **KW)
    forced.setup()
    assert forced.datasets["train"][1]["label"].tolist() == [0.0, 0.0, 1.0]
    (csv_root / "query.csv").write_text("images/5.png,a;b\n")
    with pytest.raises(ValueError, match=r"multi_label=False but .*5.png in the query split has 2 labels"):
        ImageDataModule(str(csv_root), multi_label=False, **KW).setup()


def test_folder_layout(tmp_path):
    root = tmp_path / "f"
    for split in ("train", "query", "database"):
        for c in ("x", "y"):
            for i in range(2):
                _png(root / split / c / f"{i}.png", 60 * i)
    dm = ImageDataModule(str(root), layout="folder", **KW)
    dm.setup()
    assert not dm.multi_label and dm.class_names == ["x", "y"]
    assert len(dm.datasets["train"]) == 4 and len(dm.datasets["eval"]) == 8
    (root / "query" / "x" / "0.png").unlink()
    (root / "query" / "x" / "1.png").unlink()
    (root / "query" / "y" / "0.png").unlink()
    (root / "query" / "y" / "1.png").unlink()
    with pytest.raises(ValueError, match="the query split is empty"):
        ImageDataModule(str(root), layout="folder", **KW).setup()


def test_errors_and_bad_images(csv_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)data root .* does not exist.*train.csv"):
        ImageDataModule(str(tmp_path / "none"), **KW).setup()
    (csv_root / "query.csv").rename(csv_root / "q.csv")
    with pytest.raises(FileNotFoundError, match=r"(?s)query list .*query.csv does not exist.*database.csv"):
        ImageDataModule(str(csv_root), **KW).setup()
    dm = ImageDataModule(str(csv_root), query_list="q.csv", **KW)
    dm.setup()
    (csv_root / "database.csv").write_text("images/7.png;c\n")
    with pytest.raises(ValueError, match=r"database.csv:1: expected 'path,label1;label2;...'"):
        ImageDataModule(str(csv_root), query_list="q.csv", **KW).setup()
    (csv_root / "database.csv").write_text("images/7.png,c\nimages/8.png,a\nimages/missing.png,a\n")
    (csv_root / "images" / "7.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.warns(BadImageWarning, match="2 of 10 image files are unreadable"):
        dm = ImageDataModule(str(csv_root), query_list="q.csv", **KW)
        dm.setup()
    assert len(dm.datasets["eval"]) == 3
    with pytest.raises(ValueError, match="the database split has no readable images left"):
        (csv_root / "database.csv").write_text("images/7.png,c\n")
        with pytest.warns(BadImageWarning):
            ImageDataModule(str(csv_root), query_list="q.csv", **KW).setup()
    with pytest.raises(ValueError, match=r"unreadable: .*7.png"):
        ImageDataModule(str(csv_root), query_list="q.csv", on_bad_image="error", **KW).setup()


def test_auto_generate_scenes(tmp_path):
    gen = dict(num_classes=4, num_train=6, num_query=2, num_database=3, image_size=32)
    dm = ImageDataModule(str(tmp_path / "scenes"), auto_generate=True, generator=gen, **KW)
    dm.prepare_data()
    dm.setup()
    assert dm.num_classes == 4 and len(dm.datasets["eval"]) == 5
    assert dm.class_names == (tmp_path / "scenes" / "classes.txt").read_text().split()
    assert make_glyph_scenes(tmp_path / "scenes", **gen) == tmp_path / "scenes"


def test_transforms_and_rgb(tmp_path):
    _png(tmp_path / "s.png", 0, mode="L")
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgba.save(tmp_path / "t.png")
    assert load_rgb(str(tmp_path / "s.png")).mode == "RGB"
    assert load_rgb(str(tmp_path / "t.png")).getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    img = load_rgb(str(tmp_path / "s.png"))
    ev = build_eval_transform(16, (0.5,) * 3, (0.5,) * 3)(img)
    assert ev.shape == (3, 16, 16) and torch.allclose(ev, torch.full_like(ev, -1.0))
    tr = build_train_transform(16, augment=True, hflip=1.0, affine_degrees=30, fill=255)
    assert tr(img).shape == (3, 16, 16)
    names = [type(t).__name__ for t in build_train_transform(16, augment=False).transforms]
    assert names == ["Resize", "ToTensor", "Normalize"]
    with pytest.raises(ValueError, match="unknown interpolation"):
        build_eval_transform(16, interpolation="cubic-ish")


def test_resolve_data_config():
    from datamodules.transforms import resolve_data_config

    cfg = resolve_data_config("tf_efficientnet_lite0")
    assert cfg["image_size"] == 224 and cfg["mean"] == (0.5, 0.5, 0.5) and cfg["interpolation"] == "bicubic"
    assert resolve_data_config("resnet18", image_size=64)["image_size"] == 64
