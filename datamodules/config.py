"""The config dataclasses of the DataModules (the ``data`` section), torch-free: ``sketchquant config`` and
``list`` read them without importing Lightning. Each field's default is the one place that default is
written: the DataModule takes these fields as its keyword arguments, and the files under
``configs/data/`` state only what they change."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from sketchquant.core.schema import choice

__all__ = ["RetrievalDataConfig", "SketchPhotoDataConfig", "ImageDataConfig"]


@dataclass
class RetrievalDataConfig:
    """Fields every DataModule takes. ``batch_size`` is per device. ``image_size`` / ``mean`` / ``std``
    ``None``: the application fills them from the backbone's timm data config (a DataModule built directly
    needs ``image_size``; ``mean``/``std`` then default to ImageNet's)."""

    kind: str = MISSING
    root: str = MISSING
    image_size: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    interpolation: str = "bilinear"
    augment: bool = True
    #: affine: flip + torchvision RandomAffine (settings below); sake: SAKE/ClusterRetr's augmentation
    augmentation: str = choice("affine", "sake")
    hflip: float = 0.5
    affine_degrees: float = 10.0
    affine_translate: float = 0.1
    affine_scale: list[float] = field(default_factory=lambda: [0.9, 1.1])
    batch_size: int = 64
    num_workers: int = 2
    pin_memory: bool = False
    persistent_workers: bool = True
    on_bad_image: str = choice("skip", "error")
    #: generate the embedded data into ``root`` when it does not exist (``generator``: its keyword
    #: arguments; ``generator.kind`` picks the generator, default the DataModule's own)
    auto_generate: bool = False
    generator: dict[str, Any] = field(default_factory=dict)


@dataclass
class SketchPhotoDataConfig(RetrievalDataConfig):
    """:class:`sketchquant.datamodules.SketchPhotoDataModule` (ZS-SBIR). ``batch_size`` is per device."""

    kind: str = "sketch_photo"
    layout: str = choice("folder", "sake")
    unseen_classes: Any = None  # None (<root>/unseen_classes.txt) | shipped list name | path | list
    sake_sketch_version: str = "sketch_tx_000000000000_ready"
    sake_photo_version: str = "all_photo"
    sake_split_dir: str | None = None
    val_fraction: float = 0.2
    #: folder layout: the share of the seen classes held out whole for validation (at least 2): validation
    #: then asks the zero-shot question (classes never trained on), a proxy for the unseen classes when
    #: choosing epochs; 0 = ``val_fraction`` of every seen class's images (SAKE's held-out seen sketches)
    val_classes: float = 0.0
    split_seed: int = 0
    batch_size: int = 48
    sketch_fraction: float = 1 / 3
    #: training photos turned grey with this probability: sketches carry no colour, so matching them
    #: must rest on shape (0 = off)
    photo_grayscale: float = 0.0


@dataclass
class ImageDataConfig(RetrievalDataConfig):
    """:class:`sketchquant.datamodules.ImageDataModule` (method A, hashing-style splits). ``batch_size`` is per device."""

    kind: str = "images"
    layout: str = choice("csv", "folder")
    train_list: str = "train.csv"
    query_list: str = "query.csv"
    database_list: str = "database.csv"
    multi_label: bool | None = None  # None: multi-label when some image has other than one label
    val_fraction: float = 0.1  # of the training list held out for validation (ignored with val_list)
    val_list: str | None = None  # validation images: a CSV list (csv layout) or a folder (folder layout)
    split_seed: int = 0  # draws the held-out part
