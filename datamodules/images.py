"""Image retrieval data for method A (single- or multi-label): :class:`ImageDataModule`.

Layouts:

- ``csv``: ``<root>/{train,query,database}.csv``, lines ``path,label1;label2;...`` (path relative to the
  root, labels are class names; a header line is optional; paths must not contain commas). Class order
  from ``<root>/classes.txt`` when present, else sorted names.
- ``folder``: ``<root>/{train,query,database}/<class>/*`` (single-label).

Train yields the training images (``domain=GALLERY``); validation and test both yield the query split
(``domain=QUERY``) followed by the database (``domain=GALLERY``) in one loader. Labels are ``int64`` class
ids (single-label) or ``float32`` multi-hot vectors (multi-label; detected from the data unless given).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from sketchquant.core.batch import GALLERY, QUERY

from .common import (
    EpochTaggedSampler,
    SampleDataset,
    apply_bad_image_policy,
    check_images,
    dist_info,
    eval_sampler,
    global_seed,
    list_class_dirs,
    list_images,
    make_loader,
    tree,
)
from .glyphs import read_class_list
from .transforms import IMAGENET_MEAN, IMAGENET_STD, build_eval_transform, build_train_transform

log = logging.getLogger("sketchquant.data")

SPLITS = ("train", "query", "database")
HEADER_NAMES = {"path", "image", "img", "file", "filename", "image_path", "filepath"}
CSV_LAYOUT = tree(
    [
        "<root>/",
        "  train.csv      'relative/path.png,label1;label2' per line (header optional)",
        "  query.csv",
        "  database.csv",
        "  classes.txt    optional: one class per line, fixes the label order",
        "  images/...     the files the lists name",
    ]
)
FOLDER_LAYOUT = tree(["<root>/", "  train/<class>/*", "  query/<class>/*", "  database/<class>/*"])


def read_label_csv(path: Path, root: Path) -> list[tuple[str, list[str]]]:
    """``[(absolute path, [label, ...])]`` from a ``path,l1;l2`` list; blank and ``#`` lines skipped."""
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if "," not in s:
            raise ValueError(f"{path}:{n}: expected 'path,label1;label2;...', got {line!r}")
        rel, labels = s.split(",", 1)
        rel = rel.strip()
        if not rows and rel.lower() in HEADER_NAMES and not (root / rel).exists():
            continue  # header
        names = [x.strip() for x in labels.replace(",", ";").split(";") if x.strip()]
        rows.append((rel if os.path.isabs(rel) else str(root / rel), names))
    return rows


class ImageDataModule(pl.LightningDataModule):
    """Train / query / database image sets for method A; see the module docstring."""

    def __init__(
        self,
        root: str,
        layout: str = "csv",
        train_list: str = "train.csv",
        query_list: str = "query.csv",
        database_list: str = "database.csv",
        multi_label: bool | None = None,
        image_size: int = 64,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        interpolation: str = "bilinear",
        augment: bool = True,
        hflip: float = 0.5,
        affine_degrees: float = 10,
        affine_translate: float = 0.1,
        affine_scale: Sequence[float] = (0.9, 1.1),
        batch_size: int = 48,
        num_workers: int = 2,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        on_bad_image: str = "skip",
        auto_generate: bool = False,
        generator: dict | None = None,
    ) -> None:
        super().__init__()
        if layout not in ("csv", "folder"):
            raise ValueError(f"layout must be 'csv' or 'folder', got {layout!r}")
        if on_bad_image not in ("skip", "error"):
            raise ValueError(f"on_bad_image must be 'skip' or 'error', got {on_bad_image!r}")
        self.root = Path(root).expanduser()
        self.layout = layout
        self.lists = {"train": train_list, "query": query_list, "database": database_list}
        self.multi_label_arg = multi_label
        self.image_size = image_size
        self.mean, self.std, self.interpolation = tuple(mean), tuple(std), interpolation
        self.augment, self.hflip = augment, hflip
        self.affine_degrees, self.affine_translate = affine_degrees, affine_translate
        self.affine_scale = tuple(affine_scale)
        self.batch_size = int(batch_size)
        self.num_workers, self.pin_memory, self.persistent_workers = (
            num_workers,
            pin_memory,
            persistent_workers,
        )
        self.on_bad_image = on_bad_image
        self.auto_generate = auto_generate
        self.generator = dict(generator or {})
        self._built = False

    def prepare_data(self) -> None:
        self._maybe_generate()

    def _maybe_generate(self) -> None:
        if self.auto_generate and not self.root.exists():
            if self.layout != "csv":
                raise ValueError("auto_generate writes the csv layout; set layout='csv'")
            from .glyphs import make_glyph_scenes

            log.info("generating the glyph scenes in %s", self.root)
            make_glyph_scenes(self.root, **self.generator)

    # -------------------------------------------------------------------------------------------------

    def _scan_csv(self) -> dict[str, list[tuple[str, list[str]]]]:
        rows = {}
        for split, name in self.lists.items():
            path = Path(name) if os.path.isabs(name) else self.root / name
            if not path.exists():
                raise FileNotFoundError(f"{split} list {path} does not exist. Expected layout:\n{CSV_LAYOUT}")
            rows[split] = read_label_csv(path, self.root)
        return rows

    def _scan_folder(self) -> dict[str, list[tuple[str, list[str]]]]:
        rows = {}
        for split in SPLITS:
            d = self.root / split
            if not d.is_dir():
                raise FileNotFoundError(f"{d} does not exist. Expected layout:\n{FOLDER_LAYOUT}")
            rows[split] = [(str(f), [c]) for c in list_class_dirs(d) for f in list_images(d / c)]
        return rows

    def setup(self, stage: str | None = None) -> None:
        if self._built:
            return
        self._maybe_generate()
        if not self.root.is_dir():
            layout = CSV_LAYOUT if self.layout == "csv" else FOLDER_LAYOUT
            raise FileNotFoundError(f"data root {self.root} does not exist. Expected layout:\n{layout}")
        rows = self._scan_csv() if self.layout == "csv" else self._scan_folder()
        for split in SPLITS:
            if not rows[split]:
                raise ValueError(
                    f"the {split} split is empty ({self.lists[split] if self.layout == 'csv' else split})"
                )
        classes_file = self.root / "classes.txt"
        used = sorted({c for r in rows.values() for _, labs in r for c in labs})
        if self.layout == "csv" and classes_file.exists():
            classes = read_class_list(classes_file)
            unknown = sorted(set(used) - set(classes))
            if unknown:
                raise ValueError(f"label(s) {unknown[:10]} are not in {classes_file}")
        else:
            classes = used
        if not classes:
            raise ValueError(f"no class labels found under {self.root}")
        multi = self.multi_label_arg
        if multi is None:
            multi = any(len(labs) != 1 for r in rows.values() for _, labs in r)
        elif not multi:
            for split, r in rows.items():
                for p, labs in r:
                    if len(labs) != 1:
                        raise ValueError(
                            f"multi_label=False but {p} in the {split} split has {len(labs)} labels {labs}"
                        )
        all_paths = [p for r in rows.values() for p, _ in r]
        bad = check_images(all_paths, cache_dir=self.root if os.access(self.root, os.W_OK) else None)
        skip = apply_bad_image_policy(bad, self.on_bad_image, len(all_paths))
        if skip:
            for split in SPLITS:
                rows[split] = [row for row in rows[split] if row[0] not in skip]
                if not rows[split]:
                    raise ValueError(f"the {split} split has no readable images left")
        self.class_names = list(classes)
        self.num_classes = len(classes)
        self.multi_label = bool(multi)
        cid = {c: i for i, c in enumerate(classes)}
        train_tf = build_train_transform(
            self.image_size,
            self.mean,
            self.std,
            self.interpolation,
            augment=self.augment,
            hflip=self.hflip,
            affine_degrees=self.affine_degrees,
            affine_translate=self.affine_translate,
            affine_scale=self.affine_scale,
        )
        eval_tf = build_eval_transform(self.image_size, self.mean, self.std, self.interpolation)
        self._paths: list[str] = []

        def build(parts: list[tuple[str, int]], tf) -> SampleDataset:
            paths, labels, domains, indices = [], [], [], []
            for split, dom in parts:
                for p, labs in rows[split]:
                    indices.append(len(self._paths))
                    self._paths.append(p)
                    paths.append(p)
                    ids = [cid[c] for c in labs]
                    labels.append(ids if self.multi_label else ids[0])
                    domains.append(dom)
            return SampleDataset(
                paths,
                labels,
                domains,
                indices,
                {QUERY: tf, GALLERY: tf},
                multi_label=self.multi_label,
                num_classes=self.num_classes,
            )

        self.datasets = {
            "train": build([("train", GALLERY)], train_tf),
            "eval": build([("query", QUERY), ("database", GALLERY)], eval_tf),
        }
        self.datasets["train"].augment_seed = global_seed() + 1
        self.counts = {s: len(rows[s]) for s in SPLITS}
        log.info(
            "image data %s: %d classes (%s-label); train %d, query %d, database %d",
            self.root,
            self.num_classes,
            "multi" if self.multi_label else "single",
            *self.counts.values(),
        )
        self._built = True

    def path_for_index(self, index: int) -> str:
        return self._paths[int(index)]

    # -------------------------------------------------------------------------------------------------

    def _kw(self) -> dict[str, Any]:
        return dict(
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def train_dataloader(self):
        self.setup("fit")
        ds = self.datasets["train"]
        rank, world = dist_info(getattr(self, "trainer", None))
        # shard ourselves (Lightning leaves a DistributedSampler alone); positions carry the epoch
        sampler = EpochTaggedSampler(
            ds, num_replicas=world, rank=rank, shuffle=True, seed=global_seed(), drop_last=world > 1
        )
        drop_last = len(ds) // world >= self.batch_size
        return make_loader(ds, sampler=sampler, shuffle=True, drop_last=drop_last, **self._kw())

    def _eval_loader(self):
        self.setup("validate")
        ds = self.datasets["eval"]
        return make_loader(ds, sampler=eval_sampler(ds, getattr(self, "trainer", None)), **self._kw())

    def val_dataloader(self):
        return self._eval_loader()

    def test_dataloader(self):
        return self._eval_loader()
