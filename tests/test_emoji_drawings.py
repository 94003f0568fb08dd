"""The emoji drawings: Symbola's outline emoji as sketches, Noto's colour emoji on clutter as photos.

They need Debian's emoji fonts: without them the tests skip, naming the packages, except under CI (``CI``
set), where a missing font fails them.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sketchquant.datamodules import emoji_drawings as emoji
from sketchquant.datamodules.cli_data import data_make

PACKAGES = "fonts-symbola fonts-noto-color-emoji"
TINY = dict(sketches_per_class=2, photos_per_class=2, image_size=32)


@pytest.fixture(scope="module")
def fonts():
    try:
        return emoji.font_paths()
    except FileNotFoundError as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI must have the emoji fonts ({e})")
        pytest.skip(f"needs Debian's {PACKAGES} (apt-get install {PACKAGES})")


@pytest.fixture(scope="module")
def made(fonts, tmp_path_factory):
    """The tiny set twice with seed 0 (once through ``sketchquant data make``'s helper) and once with seed 1."""
    tmp = tmp_path_factory.mktemp("emoji")
    a = emoji.make_emoji_drawings(tmp / "a", **TINY)
    b = data_make(
        tmp / "b", "emoji_drawings", [f"{k}={v}" for k, v in TINY.items()]
    )  # as the CLI passes them
    c = emoji.make_emoji_drawings(tmp / "c", **TINY, seed=1)
    return a, b, c


def _digest(root):
    """Of what the generator writes (a DataModule adds its own hidden image-check cache beside it)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def _images(root, domain):
    return [np.asarray(Image.open(p)) for p in sorted((root / domain).rglob("*.png"))]


def test_layout_counts_and_unseen_list(made):
    root = made[0]
    names = list(emoji.CLASSES)
    assert 20 <= len(names) <= 24
    for domain in ("sketch", "photo"):
        assert sorted(p.name for p in (root / domain).iterdir()) == sorted(names)
        assert all(len(list((root / domain / n).glob("*.png"))) == 2 for n in names)
    assert (root / "classes.txt").read_text().split() == names
    unseen = (root / "unseen_classes.txt").read_text().split()
    assert unseen == ["birds", "plants", "drinks", "clocks", "computers"] == emoji.UNSEEN
    man = json.loads((root / "dataset.json").read_text())
    assert man["kind"] == "emoji_drawings" and man["layout"] == "folder" and man["unseen"] == unseen
    assert man["counts"] == {"sketch": 2 * len(names), "photo": 2 * len(names)}
    assert man["params"] == {**TINY, "seed": 0}
    with Image.open(next((root / "photo" / names[0]).iterdir())) as im:
        assert im.size == (32, 32) and im.mode == "RGB"


def test_the_folder_datamodule_reads_it(made):
    from sketchquant.datamodules.sketch_photo import SketchPhotoDataModule

    dm = SketchPhotoDataModule(str(made[0]), image_size=32, num_workers=0, batch_size=6)
    dm.setup()
    assert dm.unseen_classes == sorted(emoji.UNSEEN) and dm.num_seen_classes == len(emoji.CLASSES) - 5
    assert dm.counts["test"] == {"sketch": 10, "photo": 10}


def test_bytes_per_seed(made):
    a, b, c = made
    assert _digest(a) == _digest(b)
    assert _digest(a / "sketch") != _digest(c / "sketch") and _digest(a / "photo") != _digest(c / "photo")


def test_every_class_has_four_members_in_both_fonts(fonts):
    from fontTools.ttLib import TTFont

    cmaps = [set(TTFont(p, lazy=True).getBestCmap()) for p in (fonts["sketch"], fonts["photo"])]
    members = emoji.members()
    for name, (subgroup, hexes) in emoji.CLASSES.items():
        listed = [int(h, 16) for h in hexes.split()]
        in_both = [cp for cp in listed if cp in cmaps[0] and cp in cmaps[1]]
        assert members[name] == in_both and len(set(in_both)) >= 4, (name, subgroup)
    everything = [cp for cps in members.values() for cp in cps]
    assert len(everything) == len(set(everything))  # no emoji in two classes


def test_sketches_are_dark_strokes_on_white(made):
    for im in _images(made[0], "sketch"):
        assert im.ndim == 2  # greyscale
        assert (im > 200).mean() > 0.5, "mostly white paper"
        assert im.min() < 100 and 0.01 < (im < 128).mean() < 0.5, "some dark strokes"


def test_photos_are_colourful(made):
    photos = _images(made[0], "photo")
    assert all(im.ndim == 3 and im.shape[2] == 3 for im in photos)
    # mean HSV saturation (0..255) of each photo: a grey picture has 0, as every sketch here has
    sat = np.array([np.asarray(Image.fromarray(im).convert("HSV"))[..., 1].mean() for im in photos])
    assert sat.min() > 15 and sat.mean() > 60, sat


def test_contact_sheet_from_the_command_line(made, tmp_path):
    sheet = tmp_path / "sheet.png"
    cmd = [sys.executable, "-m", "sketchquant", "data", "preview", str(made[0]), "--out", str(sheet)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    with Image.open(sheet) as im:
        assert im.size[0] > 200 and im.size[1] > 200


@pytest.fixture
def no_fonts(monkeypatch):
    monkeypatch.setattr(emoji, "_FONT_DIRS", ("/nonexistent",))
    emoji.font_paths.cache_clear()
    yield
    monkeypatch.undo()
    emoji.font_paths.cache_clear()


def test_missing_font_names_the_packages(no_fonts, tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install fonts-symbola fonts-noto-color-emoji"):
        emoji.make_emoji_drawings(tmp_path / "e", **TINY)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_a_finished_folder_is_reused_without_the_fonts(made, no_fonts):
    before = _digest(made[0])
    assert emoji.make_emoji_drawings(made[0], **TINY) == made[0] and _digest(made[0]) == before
