"""The embedded glyph benchmark: determinism, counts, atomic output, scenes, contact sheets."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from sketchquant.datamodules.cli_data import data_make, data_preview
from sketchquant.datamodules.glyphs import make_contact_sheet, make_glyph_benchmark, make_glyph_scenes
from sketchquant.datamodules.glyphs.output import OutputSettings, params_of

TINY = dict(num_classes=6, num_unseen=2, photos_per_class=3, sketches_per_class=3, image_size=32)


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_benchmark_layout_and_counts(tmp_path):
    out = make_glyph_benchmark(tmp_path / "g", **TINY)
    assert sorted(p.name for p in (out / "sketch").iterdir()) == [f"glyph_{i:03d}" for i in range(6)]
    assert len(list((out / "photo").rglob("*.png"))) == 18
    assert len(list((out / "sketch").rglob("*.png"))) == 18
    unseen = (out / "unseen_classes.txt").read_text().split()
    assert len(unseen) == 2 and set(unseen) < {f"glyph_{i:03d}" for i in range(6)}
    man = json.loads((out / "dataset.json").read_text())
    assert man["kind"] == "sketch_photo" and man["params"]["seed"] == 0
    assert man["counts"] == {"classes": 6, "seen": 4, "unseen": 2, "sketches": 18, "photos": 18}
    with Image.open(out / "photo" / "glyph_000" / "0000.png") as im:
        assert im.size == (32, 32) and im.mode == "RGB"
    assert not list(tmp_path.glob("*.tmp-*"))  # nothing half-written left behind


def test_benchmark_deterministic_and_seeded(tmp_path):
    a = digest(make_glyph_benchmark(tmp_path / "a", **TINY))
    b = digest(make_glyph_benchmark(tmp_path / "b", **TINY, workers=2))
    c = digest(make_glyph_benchmark(tmp_path / "c", **TINY, seed=1))
    assert a == b
    assert a.keys() == c.keys() and a != c
    photos = [k for k in a if k.startswith("photo/")]
    assert sum(a[k] != c[k] for k in photos) == len(photos)


def test_existing_dataset_is_reused_or_refused(tmp_path):
    out = make_glyph_benchmark(tmp_path / "g", **TINY)
    marker = out / "photo" / "glyph_000" / "0000.png"
    mtime = marker.stat().st_mtime_ns
    assert make_glyph_benchmark(tmp_path / "g", **TINY) == out
    assert marker.stat().st_mtime_ns == mtime  # not regenerated
    with pytest.raises(FileExistsError, match="not the sketch_photo dataset"):
        make_glyph_benchmark(tmp_path / "g", **{**TINY, "seed": 3})
    make_glyph_benchmark(tmp_path / "g", **{**TINY, "seed": 3}, overwrite=True)
    assert json.loads((out / "dataset.json").read_text())["params"]["seed"] == 3


def test_bad_generator_params(tmp_path):
    with pytest.raises(ValueError, match="num_unseen"):
        make_glyph_benchmark(tmp_path / "g", num_classes=3, num_unseen=3)
    assert not (tmp_path / "g").exists()


def test_scenes(tmp_path):
    kw = dict(num_classes=5, num_train=6, num_query=3, num_database=4, image_size=32)
    out = make_glyph_scenes(tmp_path / "s", **kw)
    rows = (out / "train.csv").read_text().splitlines()
    assert len(rows) == 6 and len((out / "query.csv").read_text().splitlines()) == 3
    classes = (out / "classes.txt").read_text().split()
    assert classes == [f"glyph_{i:03d}" for i in range(5)]
    for row in rows:
        path, labels = row.split(",")
        assert (out / path).exists()
        labs = labels.split(";")
        assert 1 <= len(labs) <= 3 and set(labs) <= set(classes) and len(set(labs)) == len(labs)
    assert digest(out) == digest(make_glyph_scenes(tmp_path / "s2", **kw))


def test_contact_sheets_and_cli_helpers(tmp_path, capsys):
    bench = data_make(tmp_path / "g", "sketch_photo", {k: str(v) for k, v in TINY.items()})
    assert "sketch_photo glyph dataset" in capsys.readouterr().out
    sheet = make_contact_sheet(bench, tmp_path / "sheet.png", classes=4, per_domain=2)
    with Image.open(sheet) as im:
        assert im.size[0] > 4 * 32 and im.size[1] > 4 * 32
    scenes = data_make(
        tmp_path / "s",
        "scenes",
        {"num_train": 4, "num_query": 2, "num_database": 2, "image_size": 32, "num_classes": 4},
    )
    data_preview(scenes, tmp_path / "sheet2.png")
    assert (tmp_path / "sheet2.png").exists() and "contact sheet" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown sketch_photo generator option 'colour'"):
        data_make(tmp_path / "x", "sketch_photo", {"colour": 1})
    with pytest.raises(ValueError, match="unknown kind"):
        data_make(tmp_path / "x", "video", {})


def test_mosaics(tmp_path):
    from sketchquant.datamodules.glyphs import KIND_VERSIONS, make_glyph_mosaics

    kw = dict(num_classes=5, num_train=8, num_query=3, num_database=4, image_size=32, max_objects=3)
    out = make_glyph_mosaics(tmp_path / "m", **kw)
    classes = (out / "classes.txt").read_text().split()
    rows = (out / "train.csv").read_text().splitlines()
    assert len(rows) == 8 and classes == [f"glyph_{i:03d}" for i in range(5)]
    for row in rows:
        path, labels = row.split(",")
        labs = labels.split(";")
        assert 1 <= len(labs) <= 3 and set(labs) <= set(classes) and len(set(labs)) == len(labs)
        with Image.open(out / path) as im:
            assert im.size == (32, 32) and im.mode == "RGB"
    man = json.loads((out / "dataset.json").read_text())
    assert man["kind"] == "mosaics" and man["version"] == KIND_VERSIONS["mosaics"]
    assert digest(out) == digest(make_glyph_mosaics(tmp_path / "m2", **kw, workers=2))
    assert digest(out) != digest(make_glyph_mosaics(tmp_path / "m3", **{**kw, "seed": 1}))
    with pytest.raises(ValueError, match="max_objects <= grid"):
        make_glyph_mosaics(tmp_path / "bad", grid=1, max_objects=2)


def test_digit_mosaics(tmp_path, capsys):
    from sketchquant.datamodules.digits import make_digit_mosaics

    kw = dict(num_train=6, num_query=2, num_database=3, image_size=32)
    out = data_make(tmp_path / "d", "digits", {k: str(v) for k, v in kw.items()})
    assert "digits dataset wrote" in capsys.readouterr().out
    assert (out / "classes.txt").read_text().split() == [f"digit_{c}" for c in range(10)]
    rows = (out / "train.csv").read_text().splitlines()
    assert len(rows) == 6 and all(1 <= len(r.split(",")[1].split(";")) <= 2 for r in rows)
    with Image.open(out / rows[0].split(",")[0]) as im:
        assert im.size == (32, 32)
    assert digest(out) == digest(make_digit_mosaics(tmp_path / "d2", **kw))
    from sketchquant.datamodules.digits import _digits, _pools

    pools = _pools(0, _digits()[1])
    train, test = ({int(i) for idx in pools[p].values() for i in idx} for p in ("train", "test"))
    assert len(train) + len(test) == 1797 and not train & test  # no scanned digit in both parts


def _toy_setup(c: int, domain: str):
    shade = 60 * c + (0 if domain == "sketch" else 30)
    return lambda i: Image.new("L", (8, 8), shade + i)


@dataclass(frozen=True)
class _ToySettings(OutputSettings):
    n: int = 2


def test_the_shared_generator_steps(tmp_path):
    from sketchquant.datamodules.glyphs.output import make_folder_dataset

    def options(out_dir, *, n: int = 2, size: int | None = None, workers: int = 1, overwrite: bool = False):
        return params_of(locals())

    assert options("x", n=3.0) == {"n": 3, "size": None}  # out_dir, workers, overwrite leave no trace

    def make(out):
        return make_folder_dataset(
            out,
            "toy",
            _ToySettings(),
            classes=["a", "b"],
            unseen=["b"],
            setup=_toy_setup,
            ids=lambda c, domain: range(c + 1) if domain == "sketch" else [7],
            class_list=True,
            manifest={"note": "x"},
        )

    out = make(tmp_path / "t")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "photo/a/0007.png",
        "photo/b/0007.png",
        "sketch/a/0000.png",
        "sketch/b/0000.png",
        "sketch/b/0001.png",
    ]
    with Image.open(out / "sketch" / "b" / "0001.png") as im:
        assert im.getpixel((0, 0)) == 61
    assert (out / "unseen_classes.txt").read_text() == "b\n" and (out / "classes.txt").read_text() == "a\nb\n"
    man = json.loads((out / "dataset.json").read_text())
    assert man["counts"] == {"sketch": 3, "photo": 2} and man["note"] == "x" and man["layout"] == "folder"
    stamp = (out / "dataset.json").stat().st_mtime_ns
    assert make(tmp_path / "t") == out and (out / "dataset.json").stat().st_mtime_ns == stamp  # reused


def test_a_generator_names_an_unknown_setting_and_the_allowed_ones(tmp_path):
    with pytest.raises(
        TypeError, match=r"unknown GlyphBenchmarkSettings key\(s\) \['colour'\]; allowed: .*num_unseen"
    ):
        make_glyph_benchmark(tmp_path / "g", colour=1)
    assert not (tmp_path / "g").exists()
