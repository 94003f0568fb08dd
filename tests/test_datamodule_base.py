"""RetrievalDataModule: the constructor contract (keywords = config fields), defaults from the dataclass,
public datasets per split, the shipped lists and the generated-data registry."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from sketchquant.core.batch import GALLERY, QUERY
from sketchquant.datamodules import (
    ImageDataConfig,
    ImageDataModule,
    SketchPhotoDataConfig,
    SketchPhotoDataModule,
    read_class_list,
    read_shipped_split,
)
from sketchquant.datamodules.base import RetrievalDataConfig, option_names
from sketchquant.datamodules.generated import GENERATORS, generator
from sketchquant.datamodules.glyphs import make_glyph_mosaics, make_glyph_scenes

SCENES = dict(num_classes=4, num_train=6, num_query=2, num_database=3, image_size=32)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return make_glyph_scenes(tmp_path_factory.mktemp("scenes") / "s", **SCENES)


def _kwargs(config) -> dict:
    """What the application passes: every config field but ``kind``."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k != "kind"}


@pytest.mark.parametrize(
    "module,config",
    [(ImageDataModule, ImageDataConfig), (SketchPhotoDataModule, SketchPhotoDataConfig)],
)
def test_config_fields_are_the_constructor_keywords(module, config, tmp_path):
    assert issubclass(config, RetrievalDataConfig) and module.config_class is config
    dm = module(**_kwargs(config(root=str(tmp_path), image_size=32, mean=[0.5] * 3, std=[0.5] * 3)))
    for name in option_names(config):
        if name not in ("root", "mean", "std", "affine_scale"):
            assert getattr(dm, name) == getattr(dm.config, name), name
    assert dm.mean == (0.5, 0.5, 0.5) and dm.root == tmp_path
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['colour'\]"):
        module(str(tmp_path), colour=1)
    with pytest.raises(ValueError, match="on_bad_image must be one of"):
        module(str(tmp_path), on_bad_image="ignore")


def test_defaults_come_from_the_dataclass(tmp_path):
    assert ImageDataModule(str(tmp_path)).batch_size == ImageDataConfig.batch_size == 64
    assert SketchPhotoDataModule(str(tmp_path)).batch_size == SketchPhotoDataConfig.batch_size == 48
    assert ImageDataConfig.kind == "images" and SketchPhotoDataConfig.kind == "sketch_photo"


def test_image_size_is_required_to_set_up(scenes):
    with pytest.raises(ValueError, match="image_size is None"):
        ImageDataModule(str(scenes)).setup()


def test_eval_dataset_and_labels(scenes):
    dm = ImageDataModule(str(scenes), image_size=32, num_workers=0)
    query, database, train = (dm.eval_dataset(s) for s in ("query", "database", "train"))
    assert (len(query), len(database), len(train), len(dm.eval_dataset("val"))) == (2, 3, 4, 2)
    assert set(query.domains.tolist()) == {QUERY} and set(database.domains.tolist()) == {GALLERY}
    labels = database.labels_tensor()
    assert labels.shape == (3, 4) and labels.dtype == torch.float32
    csv = (scenes / "database.csv").read_text().splitlines()
    for i, line in enumerate(csv):
        names = line.split(",")[1].split(";")
        assert [dm.class_names[c] for c in labels[i].nonzero().flatten().tolist()] == sorted(names)
        assert dm.path_for_index(database.indices[i]).endswith(line.split(",")[0])
        assert torch.equal(database.label(i), labels[i])
    # no augmentation, also for train: the same tensor twice
    assert torch.equal(train[0]["image"], train[0]["image"])
    with pytest.raises(ValueError, match="split must be one of train, val, query, database"):
        dm.eval_dataset("test")


def test_lists_and_generators(tmp_path):
    assert len(read_shipped_split("sketchy_split2")) == 21
    (tmp_path / "c.txt").write_text("# x\na\n\n b \n")
    assert read_class_list(tmp_path / "c.txt") == ["a", "b"]
    assert set(GENERATORS) >= {"sketch_photo", "scenes", "mosaics"}
    assert generator("mosaics") == (make_glyph_mosaics, "csv")
    with pytest.raises(ValueError, match="unknown kind 'video'"):
        generator("video")
