"""ImageDataModule (method A): CSV and folder layouts, multi-label parsing, bad input, transforms."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from sketchquant.core.batch import GALLERY, QUERY
from sketchquant.datamodules.common import BadImageWarning
from sketchquant.datamodules.glyphs import make_glyph_scenes
from sketchquant.datamodules.images import ImageDataModule, read_label_csv
from sketchquant.datamodules.transforms import build_eval_transform, build_train_transform, load_rgb

# val_fraction=0: these tests read the layouts; held-out validation has its own tests below
KW = dict(image_size=32, batch_size=4, num_workers=0, val_fraction=0.0)


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
    test = list(dm.test_dataloader())
    dom = torch.cat([b["domain"] for b in test])
    assert dom.tolist() == [QUERY] * 2 + [GALLERY] * 3
    idx = torch.cat([b["index"] for b in test]).tolist() + dm.datasets["train"].indices.tolist()
    assert sorted(idx) == list(range(10))
    assert dm.path_for_index(test[0]["index"][0]).endswith("5.png")
    assert dm.val_dataloader() == []  # val_fraction=0 and no val_list: no validation
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
    from sketchquant.datamodules.transforms import resolve_data_config

    cfg = resolve_data_config("tf_efficientnet_lite0")
    assert cfg["image_size"] == 224 and cfg["mean"] == (0.5, 0.5, 0.5) and cfg["interpolation"] == "bicubic"
    assert resolve_data_config("resnet18", image_size=64)["image_size"] == 64


def _split_paths(root: Path, *names: str) -> set[str]:
    return {
        str(root / line.split(",")[0])
        for name in names
        for line in (root / name).read_text().splitlines()
        if line.strip() and not line.startswith(("#", "path"))
    }


def _read_paths(monkeypatch, loader) -> set[str]:
    """Every file the loader's dataset opens while it is iterated."""
    import sketchquant.datamodules.common as common

    seen: set[str] = set()
    real = common.load_rgb

    def spy(path):
        seen.add(str(path))
        return real(path)

    monkeypatch.setattr(common, "load_rgb", spy)
    for _ in loader:
        pass
    monkeypatch.setattr(common, "load_rgb", real)
    return seen


def test_validation_never_reads_query_or_database(monkeypatch, tmp_path):
    """Issue 11.3: model selection (validation) uses images held out of train, never the test splits."""
    gen = dict(num_classes=4, num_train=20, num_query=4, num_database=6, image_size=32)
    root = make_glyph_scenes(tmp_path / "scenes", **gen)
    dm = ImageDataModule(str(root), image_size=32, batch_size=4, num_workers=0, val_fraction=0.2)
    dm.setup("fit")
    test_paths = _split_paths(root, "query.csv", "database.csv")
    train_paths = _split_paths(root, "train.csv")
    val_read = _read_paths(monkeypatch, dm.val_dataloader())
    assert len(val_read) == 4 and val_read <= train_paths and not val_read & test_paths
    train_read = _read_paths(monkeypatch, dm.train_dataloader())
    assert train_read <= train_paths and not train_read & val_read  # held out of training too
    assert len(dm.datasets["train"]) == 16 and dm.counts["val"] == 4
    val = dm.datasets["val"]
    assert val.domains.tolist() == [QUERY] + [GALLERY] * 3  # a quarter queries, the rest the database
    assert _read_paths(monkeypatch, dm.test_dataloader()) == test_paths
    again = ImageDataModule(str(root), image_size=32, num_workers=0, val_fraction=0.2)
    again.setup()
    assert again.datasets["val"].paths == val.paths  # the same draw every time (split_seed)
    other = ImageDataModule(str(root), image_size=32, num_workers=0, val_fraction=0.2, split_seed=1)
    other.setup()
    assert other.datasets["val"].paths != val.paths


def test_val_list(csv_root):
    (csv_root / "val.csv").write_text("images/3.png,a\nimages/4.png,b\n")
    (csv_root / "train.csv").write_text("images/0.png,a;b\nimages/1.png,c\nimages/2.png,b\n")
    dm = ImageDataModule(str(csv_root), image_size=32, num_workers=0, val_list="val.csv")
    dm.setup()
    assert [Path(p).name for p in dm.datasets["val"].paths] == ["3.png", "4.png"]
    assert len(dm.datasets["train"]) == 3  # nothing held out of train when a list is given
    (csv_root / "val.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"val list .*val.csv does not exist"):
        ImageDataModule(str(csv_root), image_size=32, val_list="val.csv").setup()
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
        ImageDataModule(str(csv_root), val_fraction=1.0)
