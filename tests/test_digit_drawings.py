"""The real-drawing check's data: scikit-learn's handwritten digits as sketches, printed digits as photos."""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from sketchquant.datamodules.cli_data import data_make
from sketchquant.datamodules.digit_drawings import make_digit_drawings
from sketchquant.datamodules.sketch_photo import SketchPhotoDataModule


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_layout_counts_and_bytes_per_seed(tmp_path):
    kw = dict(photos_per_class=2, sketches_per_class=3, image_size=32, seed=0)
    a = make_digit_drawings(tmp_path / "a", **kw)
    b = make_digit_drawings(tmp_path / "b", **kw)
    assert _digest(a) == _digest(b)
    assert sorted(p.name for p in (a / "sketch").iterdir()) == [f"digit_{c}" for c in range(10)]
    assert len(list((a / "photo").rglob("*.png"))) == 20 and len(list((a / "sketch").rglob("*.png"))) == 30
    unseen = (a / "unseen_classes.txt").read_text().split()
    assert len(unseen) == 3
    sketch = np.asarray(Image.open(next((a / "sketch" / "digit_0").iterdir())))
    assert sketch.shape == (32, 32, 3) and sketch.max() == 255 and sketch.min() < 128  # dark ink on white
    dm = SketchPhotoDataModule(str(a), image_size=32, num_workers=0, batch_size=6)
    dm.setup()
    assert dm.unseen_classes == sorted(unseen) and dm.num_seen_classes == 7
    assert dm.counts["test"] == {"sketch": 9, "photo": 6}


def test_command_line_settings_reach_the_optional_sketch_count(tmp_path):
    # ``sketches_per_class`` defaults to None (every scan): "2" from the command line is still a number
    kw = dict(photos_per_class=1, sketches_per_class=2, image_size=16)
    a = data_make(tmp_path / "a", "digit_drawings", {k: str(v) for k, v in kw.items()})
    assert len(list((a / "sketch").rglob("*.png"))) == 20
    assert _digest(a) == _digest(make_digit_drawings(tmp_path / "b", **kw))
    everything = data_make(
        tmp_path / "c",
        "digit_drawings",
        {"sketches_per_class": "none", "photos_per_class": "1", "image_size": "16"},
    )
    assert len(list((everything / "sketch").rglob("*.png"))) == 1797
