"""SketchPhotoDataModule: folder and SAKE layouts, zero-shot invariants, batch mix, bad input."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler

from sketchquant.core.batch import PHOTO, SKETCH
from sketchquant.datamodules.common import CHECK_CACHE, BadImageWarning, MixedDomainSampler
from sketchquant.datamodules.glyphs import make_glyph_benchmark
from sketchquant.datamodules.sketch_photo import SHIPPED_SPLITS, SketchPhotoDataModule, resolve_unseen_classes

GEN = dict(num_classes=6, num_unseen=2, photos_per_class=5, sketches_per_class=5, image_size=32)
KW = dict(image_size=32, batch_size=6, num_workers=0)


@pytest.fixture(scope="module")
def bench_src(tmp_path_factory) -> Path:
    return make_glyph_benchmark(tmp_path_factory.mktemp("glyphs") / "bench", **GEN)


@pytest.fixture
def bench(bench_src, tmp_path) -> Path:
    """A private copy each test may damage."""
    return Path(shutil.copytree(bench_src, tmp_path / "bench"))


def all_batches(loader):
    return [b for b in loader]


def test_folder_layout_splits_and_attributes(bench):
    dm = SketchPhotoDataModule(str(bench), **KW)
    dm.setup("fit")
    unseen = (bench / "unseen_classes.txt").read_text().split()
    assert dm.unseen_classes == sorted(unseen)
    assert dm.num_seen_classes == 4 and dm.num_classes == 6
    assert dm.class_names == dm.seen_classes + dm.unseen_classes
    # 5 per class and domain, 20% held out -> 4 train + 1 val per seen class
    assert dm.counts == {
        "train": {"sketch": 16, "photo": 16},
        "val": {"sketch": 4, "photo": 4},
        "test": {"sketch": 10, "photo": 10},
    }
    idx = np.concatenate([dm.datasets[s].indices for s in ("train", "val", "test")])
    assert len(set(idx.tolist())) == len(idx) == 60
    s = dm.datasets["test"][0]
    assert set(s) == {"image", "label", "domain", "index"} and s["image"].shape == (3, 32, 32)
    assert dm.path_for_index(s["index"]).endswith(".png")
    assert Path(dm.path_for_index(s["index"])).parent.name == dm.class_names[int(s["label"])]


def test_val_classes_hold_out_whole_seen_classes(bench):
    """``val_classes``: validation asks the zero-shot question on seen classes never trained on."""
    dm = SketchPhotoDataModule(str(bench), val_classes=0.5, val_fraction=0.0, **KW)
    dm.setup("fit")
    unseen = sorted((bench / "unseen_classes.txt").read_text().split())
    assert len(dm.held_out_classes) == 2 and not set(dm.held_out_classes) & set(unseen)
    assert dm.num_seen_classes == 2 and dm.class_names == dm.seen_classes + dm.held_out_classes + unseen
    classes = {
        stage: {dm.class_names[int(dm.datasets[stage][i]["label"])] for i in range(len(dm.datasets[stage]))}
        for stage in ("train", "val", "test")
    }
    assert classes["train"] == set(dm.seen_classes) and classes["val"] == set(dm.held_out_classes)
    assert classes["test"] == set(unseen)
    assert dm.counts["val"] == {"sketch": 10, "photo": 10} and dm.counts["train"] == {
        "sketch": 10,
        "photo": 10,
    }
    again = SketchPhotoDataModule(str(bench), val_classes=0.5, val_fraction=0.0, **KW)
    again.setup("fit")
    assert again.held_out_classes == dm.held_out_classes  # drawn from split_seed
    with pytest.raises(ValueError, match="at least 2 must stay for training"):
        SketchPhotoDataModule(str(bench), val_classes=0.9, **KW).setup("fit")
    with pytest.raises(ValueError, match=r"val_classes must be in \[0, 1\)"):
        SketchPhotoDataModule(str(bench), val_classes=1.0, **KW)


def test_zero_shot_invariant_and_unique_indices(bench):
    dm = SketchPhotoDataModule(str(bench), **KW)
    dm.setup()
    seen_idx = []
    for name, loader in (("train", dm.train_dataloader()), ("val", dm.val_dataloader())):
        for b in all_batches(loader):
            assert int(b["label"].max()) < dm.num_seen_classes, name  # no unseen class before test
            seen_idx += b["index"].tolist()
    test = all_batches(dm.test_dataloader())
    labels = torch.cat([b["label"] for b in test])
    assert int(labels.min()) >= dm.num_seen_classes
    test_idx = torch.cat([b["index"] for b in test]).tolist()
    assert len(set(test_idx)) == len(test_idx) and not set(test_idx) & set(seen_idx)
    dom = torch.cat([b["domain"] for b in test])
    assert (dom == SKETCH).sum() == 10 and (dom == PHOTO).sum() == 10


@pytest.mark.parametrize("fraction,n_sketch", [(1 / 3, 2), (0.5, 3)])
def test_batch_mix(bench, fraction, n_sketch):
    dm = SketchPhotoDataModule(str(bench), sketch_fraction=fraction, **KW)
    dm.setup()
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, DistributedSampler)  # so Lightning never injects its own
    batches = all_batches(loader)
    assert len(batches) == 16 // (6 - n_sketch) == len(loader)
    for b in batches:
        assert len(b["domain"]) == 6 and int((b["domain"] == SKETCH).sum()) == n_sketch


def test_mixed_sampler_shards_by_rank():
    ds = list(range(100))
    sk, ph = list(range(0, 30)), list(range(30, 100))
    runs = [list(MixedDomainSampler(ds, sk, ph, 9, 1 / 3, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(runs[0]) == len(runs[1]) == (70 // 2 // 6) * 9
    photos = [set(x for x in r if x >= 30) for r in runs]
    sketches = [set(x for x in r if x < 30) for r in runs]
    assert not photos[0] & photos[1] and not sketches[0] & sketches[1]
    s = MixedDomainSampler(ds, sk, ph, 9, 1 / 3, seed=3)
    first = list(s)
    s.set_epoch(1)
    assert list(s) != first and sorted(set(x for x in first if x >= 30)) == sorted(
        x for x in first if x >= 30
    )  # photos not repeated within an epoch


def test_truncated_image_skip_and_error(bench):
    victim = sorted((bench / "photo").rglob("*.png"))[0]
    victim.write_bytes(victim.read_bytes()[:60])
    with pytest.warns(BadImageWarning, match=r"1 of 60 image files are unreadable: .*0000\.png"):
        dm = SketchPhotoDataModule(str(bench), **KW)
        dm.setup()
    assert str(victim) not in dm._paths
    assert (bench / CHECK_CACHE).exists()
    with pytest.raises(ValueError, match=rf"unreadable: {victim}"):
        SketchPhotoDataModule(str(bench), on_bad_image="error", **KW).setup()


def test_folder_errors(bench, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)does not exist.*sketch/<class>"):
        SketchPhotoDataModule(str(tmp_path / "nowhere"), **KW).setup()
    with pytest.raises(ValueError, match=r"\['zebra'\] from unseen_classes argument not found on disk"):
        SketchPhotoDataModule(str(bench), unseen_classes=["zebra"], **KW).setup()
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(ValueError, match="unseen class list .* is empty"):
        SketchPhotoDataModule(str(bench), unseen_classes=str(empty), **KW).setup()
    with pytest.raises(FileNotFoundError, match="neither a shipped list"):
        SketchPhotoDataModule(str(bench), unseen_classes="sketchy_split9", **KW).setup()
    names = sorted(p.name for p in (bench / "sketch").iterdir())
    with pytest.raises(ValueError, match="every class is unseen"):
        SketchPhotoDataModule(str(bench), unseen_classes=names, **KW).setup()
    shutil.rmtree(bench / "photo" / names[0])
    with pytest.raises(ValueError, match=rf"sketches but no photos: \['{names[0]}'\]"):
        SketchPhotoDataModule(str(bench), **KW).setup()
    (bench / "photo" / names[0]).mkdir()
    with pytest.raises(ValueError, match=rf"class '{names[0]}' has no photo images"):
        SketchPhotoDataModule(str(bench), **KW).setup()
    shutil.rmtree(bench / "photo")
    with pytest.raises(
        FileNotFoundError, match=r"(?s)photo folder of the 'folder' layout.*unseen_classes.txt"
    ):
        SketchPhotoDataModule(str(bench), **KW).setup()


def test_unseen_list_forms_and_shipped_lists(bench, tmp_path):
    names = sorted(p.name for p in (bench / "sketch").iterdir())
    f = tmp_path / "u.txt"
    f.write_text(f"# comment\n{names[0].upper()}\n{names[1]}\n")  # case-insensitive fallback match
    dm = SketchPhotoDataModule(str(bench), unseen_classes=str(f), **KW)
    dm.setup()
    assert dm.unseen_classes == names[:2]
    sizes = {n: len(resolve_unseen_classes(n, tmp_path)[0]) for n in SHIPPED_SPLITS}
    assert sizes == {"sketchy_split1": 25, "sketchy_split2": 21, "tuberlin": 30, "quickdraw": 30}
    assert "bat" in resolve_unseen_classes("sketchy_split2", tmp_path)[0]


def test_auto_generate(tmp_path):
    root = tmp_path / "auto"
    dm = SketchPhotoDataModule(str(root), auto_generate=True, generator=GEN, **KW)
    dm.prepare_data()
    dm.setup()
    assert (root / "dataset.json").exists() and dm.num_classes == 6


# ---------------------------------------------------------------------------------------------------
# SAKE layout


def _png(path: Path, value: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value, value, value)).save(path)
    return str(path)


@pytest.fixture
def sake(tmp_path) -> Path:
    """A tiny Sketchy-like tree with SAKE file lists in <root>/zeroshot (class names with spaces too)."""
    root = tmp_path / "Sketchy"
    seen, unseen = ["cat", "hot air balloon", "pig"], ["bat", "cow"]
    split = root / "zeroshot"
    split.mkdir(parents=True)
    (split / "cname_cid.txt").write_text("".join(f"{c} {i}\n" for i, c in enumerate(seen)))
    (split / "cname_cid_zero.txt").write_text("".join(f"{c} {i}\n" for i, c in enumerate(unseen)))
    for version, folder in (
        ("sketch_tx_000000000000_ready", "256x256/sketch/tx_000000000000_ready"),
        ("all_photo", "256x256/photo/tx_000000000000"),
    ):
        lists: dict[str, list[str]] = {"train": [], "test": [], "zero": []}
        for part, classes, n in (("train", seen, 4), ("test", seen, 1), ("zero", unseen, 3)):
            for cid, c in enumerate(classes):
                for i in range(n):
                    rel = f"{folder}/{c}/{part}_{i}.png"
                    _png(root / rel, 40 * cid + i)
                    lists[part].append(f"{rel} {cid}")
        for part, lines in lists.items():
            if version == "all_photo" and part == "test":
                continue  # SAKE ships no photo test list: the module must fall back
            (split / f"{version}_filelist_{part}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_sake_layout(sake, caplog):
    dm = SketchPhotoDataModule(str(sake), layout="sake", sake_split_dir="zeroshot", val_fraction=0.25, **KW)
    with caplog.at_level(logging.WARNING, logger="sketchquant.data"):
        dm.setup()
    assert "all_photo_filelist_test.txt not found" in caplog.text
    assert dm.seen_classes == ["cat", "hot air balloon", "pig"] and dm.unseen_classes == ["bat", "cow"]
    # sketches: train 4/class, val = test list 1/class; photos: 4/class train, 25% held out -> 3 + 1
    assert dm.counts == {
        "train": {"sketch": 12, "photo": 9},
        "val": {"sketch": 3, "photo": 3},
        "test": {"sketch": 6, "photo": 6},
    }
    test = all_batches(dm.test_dataloader())
    assert sorted(set(torch.cat([b["label"] for b in test]).tolist())) == [3, 4]
    for b in all_batches(dm.train_dataloader()) + all_batches(dm.val_dataloader()):
        assert int(b["label"].max()) < 3
    i = int(test[0]["index"][0])
    assert "/sketch/" in dm.path_for_index(i)


def test_sake_errors(sake):
    split = sake / "zeroshot"
    mk = dict(layout="sake", sake_split_dir=str(split), **KW)
    (split / "cname_cid_zero.txt").write_text("bat 0\ncow 1\ncat 2\n")
    with pytest.raises(ValueError, match=r"\['cat'\] are in both cname_cid.txt \(seen\) and cname_cid_zero"):
        SketchPhotoDataModule(str(sake), **mk).setup()
    (split / "cname_cid_zero.txt").write_text("bat 0\ncow 1\n")
    shutil.rmtree(sake / "256x256/photo/tx_000000000000/cow")
    with pytest.raises(ValueError, match=r"class 'cow' of the test photo list is not on disk"):
        SketchPhotoDataModule(str(sake), **mk).setup()
    with pytest.raises(ValueError, match=r"does not match"):
        SketchPhotoDataModule(str(sake), unseen_classes=["bat"], **mk).setup()
    (split / "all_photo_filelist_zero.txt").write_text("")
    with pytest.raises(ValueError, match="the test split has no photo images"):
        SketchPhotoDataModule(str(sake), **mk).setup()
    (split / "all_photo_filelist_zero.txt").write_text("some/file.png 7\n")
    with pytest.raises(
        ValueError, match=r"all_photo_filelist_zero.txt:1: label 7 is not in the class-name file"
    ):
        SketchPhotoDataModule(str(sake), **mk).setup()
    (split / "all_photo_filelist_zero.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"(?s)missing .*all_photo_filelist_zero.txt.*cname_cid.txt"):
        SketchPhotoDataModule(str(sake), **mk).setup()


def test_constructor_validation(tmp_path):
    with pytest.raises(ValueError, match="layout must be"):
        SketchPhotoDataModule(str(tmp_path), layout="zip")
    with pytest.raises(ValueError, match="on_bad_image must be"):
        SketchPhotoDataModule(str(tmp_path), on_bad_image="ignore")


def test_sake_layout_as_published_trains_on_every_photo(sake):
    """``val_fraction=0`` without a photo ``test`` list (the published configs): every seen photo trains,
    validation is the held-out seen sketches alone (SAKE picks its epoch by their accuracy)."""
    dm = SketchPhotoDataModule(str(sake), layout="sake", sake_split_dir="zeroshot", val_fraction=0.0, **KW)
    dm.setup()
    assert dm.counts["train"] == {"sketch": 12, "photo": 12}
    assert dm.counts["val"] == {"sketch": 3, "photo": 0}
    val = all_batches(dm.val_dataloader())
    assert all(int(d) == 1 for b in val for d in b["domain"])  # sketches only


def test_published_configs_follow_the_published_code():
    from sketchquant.app.methods import compose

    for name in ("zs_sbir_sketchy", "zs_sbir_tuberlin", "zs_sbir_quickdraw"):
        cfg = compose(name, ["data.root=/data"])
        assert cfg.data.batch_size == 78 and cfg.data.sketch_fraction == pytest.approx(1 / 3)  # 26 + 52
        assert cfg.data.augmentation == "sake" and cfg.data.image_size == 224
        assert cfg.monitor == "val/acc" and cfg.trainer.max_epochs == 20
        assert (cfg.model.optim.lr, cfg.model.optim.weight_decay, cfg.model.optim.schedule) == (
            1e-4,
            5e-4,
            "exp",
        )
        assert (cfg.eval.pq_m, cfg.eval.pq_k, cfg.eval.fusion_lambda) == (2, 32, 0.2)
        assert cfg.eval.pq_max_points_per_centroid is None
    assert compose("zs_sbir_sketchy", ["data.root=/data"]).data.val_fraction == 0.0


def test_photo_grayscale_greys_training_photos_only(bench):
    kw = {**KW, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "augment": False}
    dm = SketchPhotoDataModule(str(bench), photo_grayscale=1.0, **kw)
    dm.setup("fit")
    train = dm.datasets["train"]
    photos = [train[i]["image"] for i in train.positions(PHOTO)]
    assert all(torch.equal(x[0], x[1]) and torch.equal(x[1], x[2]) for x in photos)
    plain = SketchPhotoDataModule(str(bench), **kw)
    plain.setup("fit")
    colour = [plain.datasets["train"][i]["image"] for i in plain.datasets["train"].positions(PHOTO)]
    assert any(not torch.equal(x[0], x[1]) for x in colour)  # the glyph photos are coloured
    val = dm.datasets["val"]
    assert any(not torch.equal(val[i]["image"][0], val[i]["image"][1]) for i in val.positions(PHOTO))
    with pytest.raises(ValueError, match="photo_grayscale must be in"):
        SketchPhotoDataModule(str(bench), photo_grayscale=2.0, **KW)
