"""The one DataModule base both methods' data use: :class:`RetrievalDataModule` and its config fields.

A subclass declares only its layouts and its splits: the config dataclass it reads
(:attr:`RetrievalDataModule.config_class`), the expected trees for error messages, what ``auto_generate``
writes, and :meth:`RetrievalDataModule.build` (scan the layout, hand the rows to :meth:`add_dataset`).
Everything else lives here once: options from the config dataclass (the one place defaults are written),
generation, image checks and the bad-image policy, sample indices, transforms, loaders,
:meth:`~RetrievalDataModule.path_for_index` and :meth:`~RetrievalDataModule.eval_dataset`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, ClassVar

import pytorch_lightning as pl

from .common import (
    EpochTaggedSampler,
    SampleDataset,
    apply_bad_image_policy,
    check_images,
    dist_info,
    eval_sampler,
    global_seed,
    make_loader,
)
from .config import RetrievalDataConfig
from .generated import generator
from .transforms import IMAGENET_MEAN, IMAGENET_STD, build_eval_transform, build_train_transform

#: the data settings that are build_train_transform's augmentation keywords, under the same names
AUGMENT_SETTINGS = ("augment", "hflip", "affine_degrees", "affine_translate", "affine_scale", "augmentation")

log = logging.getLogger("sketchquant.data")


def option_names(config_class: type) -> list[str]:
    """The constructor keywords of a DataModule: its config fields minus ``kind``."""
    return [f.name for f in fields(config_class) if f.name != "kind"]


class RetrievalDataModule(pl.LightningDataModule):
    """Base of the DataModules: ``Cls(root, **options)`` with options named as ``config_class``'s fields.

    After :meth:`setup`: ``datasets`` (name → :class:`SampleDataset`), ``class_names``, ``num_classes``,
    and every sample's ``index`` unique over all datasets (:meth:`path_for_index` maps it to its file).
    """

    #: the config dataclass (field defaults are the constructor defaults)
    config_class: ClassVar[type[RetrievalDataConfig]] = RetrievalDataConfig
    #: layout name → the expected tree, printed when something is missing
    layouts: ClassVar[dict[str, str]] = {}
    #: ``generator.kind`` used when the generator dict names none
    default_generator: ClassVar[str] = ""

    def __init__(self, root: str | os.PathLike, **options: Any) -> None:
        super().__init__()
        allowed = option_names(self.config_class)
        unknown = sorted(set(options) - set(allowed) - {"kind"})
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unknown option(s) {unknown}; allowed: {', '.join(allowed)}"
            )
        cfg = self.config_class(root=str(root), **options)
        for f in fields(cfg):
            allowed_values = f.metadata.get("choices")
            value = getattr(cfg, f.name)
            if allowed_values and value not in allowed_values:
                raise ValueError(f"{f.name} must be one of {allowed_values}, got {value!r}")
        self.config = cfg
        for name in allowed:
            setattr(self, name, getattr(cfg, name))
        self.root = Path(root).expanduser()
        self.mean = tuple(cfg.mean) if cfg.mean is not None else IMAGENET_MEAN
        self.std = tuple(cfg.std) if cfg.std is not None else IMAGENET_STD
        self.affine_scale = tuple(cfg.affine_scale)
        self.batch_size = int(cfg.batch_size)
        self.generator = dict(cfg.generator or {})
        self.check_options()
        self._built = False

    def check_options(self) -> None:
        """Subclasses: raise ``ValueError`` for option values out of range."""

    # -------------------------------------------------------------------------------------------------
    # preparation

    def prepare_data(self) -> None:
        self._maybe_generate()

    def _maybe_generate(self) -> None:
        if not (self.auto_generate and not self.root.exists()):
            return

        gen = dict(self.generator)
        kind = gen.pop("kind", self.default_generator)
        make, layout = generator(kind)
        if self.layout != layout:
            raise ValueError(f"auto_generate writes the {layout} layout; set layout='{layout}'")
        log.info("generating the %s data in %s", kind, self.root)
        make(self.root, **gen)

    def setup(self, stage: str | None = None) -> None:
        if self._built:
            return
        self._maybe_generate()
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"data root {self.root} does not exist. Expected layout:\n{self.layouts[self.layout]}"
            )
        if self.image_size is None:
            raise ValueError(
                "image_size is None: pass it (the application fills it from the backbone's data config)"
            )
        self._paths: list[str] = []
        self.datasets: dict[str, SampleDataset] = {}
        self.build()
        self._built = True

    def build(self) -> None:
        """Subclasses: read the layout, check images (:meth:`drop_bad_images`), set ``class_names`` /
        ``num_classes`` and add the datasets (:meth:`add_dataset`)."""
        raise NotImplementedError

    # -------------------------------------------------------------------------------------------------
    # image checks, indices, transforms

    def drop_bad_images(self, paths: Sequence[str]) -> set[str]:
        """Check every file once (cached in the root when writable); apply ``on_bad_image``: the files to
        leave out (``skip``) or a ``ValueError`` (``error``)."""
        cache = self.root if os.access(self.root, os.W_OK) else None
        bad = check_images(paths, cache_dir=cache)
        return apply_bad_image_policy(bad, self.on_bad_image, len(paths))

    def add_dataset(
        self,
        name: str,
        rows: Sequence[tuple[str, Any, int]],
        transforms: dict[int, Callable],
        *,
        train: bool = False,
        multi_label: bool = False,
        num_classes: int | None = None,
    ) -> SampleDataset:
        """Make ``datasets[name]`` from ``(path, label, domain)`` rows; indices continue from the datasets
        added before, so ``index`` is unique over all of them. ``train``: seeded augmentation."""
        indices = list(range(len(self._paths), len(self._paths) + len(rows)))
        self._paths.extend(p for p, _, _ in rows)
        ds = SampleDataset(
            [p for p, _, _ in rows],
            [lab for _, lab, _ in rows],
            [d for _, _, d in rows],
            indices,
            transforms,
            multi_label=multi_label,
            num_classes=num_classes,
        )
        if train:
            ds.augment_seed = self.train_seed() + 1
        self.datasets[name] = ds
        return ds

    def path_for_index(self, index: int) -> str:
        """File path of the sample with this ``index`` (any dataset)."""
        return self._paths[int(index)]

    def train_transform(self, fill: int = 0):
        """Resize + (``augment``) flip and affine; ``fill`` paints what the affine uncovers."""
        augment = {key: getattr(self, key) for key in AUGMENT_SETTINGS}
        return build_train_transform(
            self.image_size, self.mean, self.std, self.interpolation, fill=fill, **augment
        )

    def eval_transform(self):
        return build_eval_transform(self.image_size, self.mean, self.std, self.interpolation)

    #: public split name → (dataset name, domain or None for all of it); see :meth:`eval_dataset`
    eval_splits: ClassVar[dict[str, tuple[str, int | None]]] = {}

    def eval_dataset(self, split: str) -> SampleDataset:
        """The samples of ``split`` (a key of :attr:`eval_splits`) with the eval transform: no augmentation,
        also for ``train``; labels, domains and indices as in the run's own datasets."""
        self.setup("test")
        if split not in self.eval_splits:
            raise ValueError(f"split must be one of {', '.join(self.eval_splits)}, got {split!r}")
        name, domain = self.eval_splits[split]
        src = self.datasets[name]
        pos = range(len(src)) if domain is None else src.positions(domain).tolist()
        pos = list(pos)
        tf = self.eval_transform()
        return SampleDataset(
            [src.paths[i] for i in pos],
            [src.labels[i] for i in pos],
            src.domains[pos],
            src.indices[pos],
            {int(d): tf for d in set(src.domains.tolist())},
            multi_label=src.multi_label,
            num_classes=src.num_classes,
        )

    # -------------------------------------------------------------------------------------------------
    # loaders

    def train_seed(self) -> int:
        """Seed of the training sampler; the augmentation seed is this + 1."""
        return global_seed()

    def train_sampler(self):
        """A shuffling, rank-aware sampler whose positions carry the epoch (for seeded augmentation)."""
        rank, world = dist_info(getattr(self, "trainer", None))
        # shard ourselves (Lightning leaves a DistributedSampler alone)
        return EpochTaggedSampler(
            self.datasets["train"],
            num_replicas=world,
            rank=rank,
            shuffle=True,
            seed=self.train_seed(),
            drop_last=world > 1,
        )

    def loader(self, dataset, *, sampler: Any = None, drop_last: bool = False):
        """The one DataLoader recipe: batch size, workers, pinning from the options."""
        return make_loader(
            dataset,
            sampler=sampler,
            drop_last=drop_last,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def train_dataloader(self):
        self.setup("fit")
        ds = self.datasets["train"]
        _, world = dist_info(getattr(self, "trainer", None))
        return self.loader(ds, sampler=self.train_sampler(), drop_last=len(ds) // world >= self.batch_size)

    def eval_loader(self, name: str):
        """Unshuffled loader of ``datasets[name]`` (sharded under DDP); ``[]`` when it is empty."""
        self.setup("validate")
        ds = self.datasets[name]
        if len(ds) == 0:
            return []
        return self.loader(ds, sampler=eval_sampler(ds, getattr(self, "trainer", None)))

    #: dataset names of the validation and test stages
    val_name: ClassVar[str] = "val"
    test_name: ClassVar[str] = "test"

    def val_dataloader(self):
        return self.eval_loader(self.val_name)

    def test_dataloader(self):
        return self.eval_loader(self.test_name)
