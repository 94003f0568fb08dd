"""Zero-shot sketch-based image retrieval data (method B): :class:`SketchPhotoDataModule`.

Stages (zero-shot: unseen classes never reach training or model selection):

- ``fit`` / train: seen-class sketches and photos, minus the held-out part;
- validate: held-out seen-class sketches (queries, ``domain=SKETCH``) and photos (gallery, ``PHOTO``);
- test: unseen-class sketches (queries) and photos (gallery).

Labels: seen classes ``0..S-1`` (the classifier's targets), unseen ``S..S+U-1``. Every sample's ``index`` is
unique over all stages; :meth:`SketchPhotoDataModule.path_for_index` maps it back to its file.

Layouts:

- ``folder``: ``<root>/sketch/<class>/*`` and ``<root>/photo/<class>/*`` (the glyph benchmark, QuickDraw
  Ext, any user data); unseen classes from ``unseen_classes`` (default ``<root>/unseen_classes.txt``);
  the held-out validation part is ``val_fraction`` of each seen class, per domain, drawn from ``split_seed``.
- ``sake``: SAKE's file lists ``<split_dir>/<version>_filelist_{train,test,zero}.txt`` (``relative/path
  label`` per line, paths relative to ``root``) with ``cname_cid.txt`` / ``cname_cid_zero.txt``.
  train = ``train`` lists, validation = ``test`` lists (held-out seen), test = ``zero`` lists. A missing
  ``test`` list falls back to a held-out ``val_fraction`` of that domain's train list (logged).

The training loader mixes domains in every batch (``sketch_fraction``, 1/3 by default) with
:class:`~datamodules.common.MixedDomainSampler`, which shards by rank itself; it subclasses
``DistributedSampler`` so it works with Lightning's ``use_distributed_sampler`` either way.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from sketchquant.core.batch import PHOTO, SKETCH

from .common import (
    MixedDomainSampler,
    SampleDataset,
    apply_bad_image_policy,
    check_images,
    dist_info,
    eval_sampler,
    global_seed,
    list_class_dirs,
    list_images,
    make_loader,
    match_classes,
    stable_rng,
    tree,
)
from .glyphs import read_class_list
from .transforms import IMAGENET_MEAN, IMAGENET_STD, build_eval_transform, build_train_transform

log = logging.getLogger("sketchquant.data")

SHIPPED_SPLITS = ("sketchy_split1", "sketchy_split2", "tuberlin", "quickdraw")
DOMAIN_DIRS = {SKETCH: "sketch", PHOTO: "photo"}
STAGES = ("train", "val", "test")

FOLDER_LAYOUT = tree(
    [
        "<root>/",
        "  sketch/<class>/*.png|jpg     sketches, one folder per class",
        "  photo/<class>/*.png|jpg      photos, the same class folders",
        "  unseen_classes.txt          one unseen (test) class per line (or pass unseen_classes=...)",
    ]
)
SAKE_LAYOUT = tree(
    [
        "<root>/                                   file-list paths are relative to this",
        "  <split_dir>/ (default: <root>)",
        "    cname_cid.txt                         'classname id' per line: seen classes",
        "    cname_cid_zero.txt                    'classname id' per line: unseen classes",
        "    <sketch_version>_filelist_train.txt   'relative/path label' per line",
        "    <sketch_version>_filelist_test.txt    held-out seen sketches (validation; optional)",
        "    <sketch_version>_filelist_zero.txt    unseen sketches (test)",
        "    <photo_version>_filelist_{train,test,zero}.txt   the same for photos (test optional)",
    ]
)


def shipped_split_path(name: str) -> Path:
    ref = resources.files("datamodules") / "splits" / f"{name}.txt"
    return Path(str(ref))


def resolve_unseen_classes(spec: str | Sequence[str] | None, root: Path) -> tuple[list[str], str]:
    """Unseen class names and where they came from (for messages)."""
    if spec is None:
        path = root / "unseen_classes.txt"
        if not path.exists():
            raise FileNotFoundError(
                f"no unseen_classes given and {path} does not exist; pass unseen_classes= a list, a txt file "
                f"or one of {SHIPPED_SPLITS}. Expected layout:\n{FOLDER_LAYOUT}"
            )
        return read_class_list(path), str(path)
    if isinstance(spec, str):
        if spec in SHIPPED_SPLITS:
            return read_class_list(shipped_split_path(spec)), f"shipped list {spec!r}"
        path = Path(spec).expanduser()
        if not path.exists() and (root / spec).exists():
            path = root / spec
        if not path.exists():
            raise FileNotFoundError(
                f"unseen_classes={spec!r} is neither a shipped list {SHIPPED_SPLITS} nor an existing file"
            )
        return read_class_list(path), str(path)
    return [str(c) for c in spec], "unseen_classes argument"


def _read_cname(path: Path) -> dict[int, str]:
    out: dict[int, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            cid = int(parts[-1])
        except ValueError:
            raise ValueError(f"{path}:{n}: expected 'classname id', got {line!r}") from None
        out[cid] = " ".join(parts[:-1])
    return out


def _read_filelist(path: Path, root: Path, names: dict[int, str]) -> list[tuple[str, str]]:
    """``[(absolute path, class name)]`` from a SAKE file list."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(maxsplit=1)
        if len(parts) != 2:
            raise ValueError(f"{path}:{n}: expected 'relative/path label', got {line!r}")
        try:
            cid = int(parts[1])
        except ValueError:
            raise ValueError(f"{path}:{n}: label {parts[1]!r} is not an integer") from None
        if cid not in names:
            raise ValueError(f"{path}:{n}: label {cid} is not in the class-name file ({len(names)} ids)")
        rel = parts[0]
        out.append((rel if os.path.isabs(rel) else str(root / rel), names[cid]))
    return out


class SketchPhotoDataModule(pl.LightningDataModule):
    """Seen/unseen sketch and photo splits for zero-shot SBIR; see the module docstring."""

    def __init__(
        self,
        root: str,
        layout: str = "folder",
        unseen_classes: str | list | None = None,
        sake_sketch_version: str = "sketch_tx_000000000000_ready",
        sake_photo_version: str = "all_photo",
        sake_split_dir: str | None = None,
        val_fraction: float = 0.2,
        split_seed: int = 0,
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
        sketch_fraction: float = 1 / 3,
        num_workers: int = 2,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        on_bad_image: str = "skip",
        auto_generate: bool = False,
        generator: dict | None = None,
    ) -> None:
        super().__init__()
        if layout not in ("folder", "sake"):
            raise ValueError(f"layout must be 'folder' or 'sake', got {layout!r}")
        if on_bad_image not in ("skip", "error"):
            raise ValueError(f"on_bad_image must be 'skip' or 'error', got {on_bad_image!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if not 0.0 <= sketch_fraction <= 1.0:
            raise ValueError(f"sketch_fraction must be in [0, 1], got {sketch_fraction}")
        self.root = Path(root).expanduser()
        self.layout = layout
        self.unseen_spec = unseen_classes
        self.sake_sketch_version = sake_sketch_version
        self.sake_photo_version = sake_photo_version
        self.sake_split_dir = sake_split_dir
        self.val_fraction = float(val_fraction)
        self.split_seed = int(split_seed)
        self.image_size = image_size
        self.mean, self.std, self.interpolation = tuple(mean), tuple(std), interpolation
        self.augment, self.hflip = augment, hflip
        self.affine_degrees, self.affine_translate = affine_degrees, affine_translate
        self.affine_scale = tuple(affine_scale)
        self.batch_size = int(batch_size)
        self.sketch_fraction = float(sketch_fraction)
        self.num_workers, self.pin_memory, self.persistent_workers = (
            num_workers,
            pin_memory,
            persistent_workers,
        )
        self.on_bad_image = on_bad_image
        self.auto_generate = auto_generate
        self.generator = dict(generator or {})
        self._built = False

    # -------------------------------------------------------------------------------------------------
    # preparation

    def prepare_data(self) -> None:
        self._maybe_generate()

    def _maybe_generate(self) -> None:
        if self.auto_generate and not self.root.exists():
            if self.layout != "folder":
                raise ValueError("auto_generate writes the folder layout; set layout='folder'")
            from .glyphs import make_glyph_benchmark

            log.info("generating the glyph benchmark in %s", self.root)
            make_glyph_benchmark(self.root, **self.generator)

    def setup(self, stage: str | None = None) -> None:
        if self._built:
            return
        self._maybe_generate()
        if not self.root.is_dir():
            layout = FOLDER_LAYOUT if self.layout == "folder" else SAKE_LAYOUT
            raise FileNotFoundError(f"data root {self.root} does not exist. Expected layout:\n{layout}")
        if self.layout == "folder":
            splits, seen, unseen = self._scan_folder()
        else:
            splits, seen, unseen = self._scan_sake()
        self._finish(splits, seen, unseen)
        self._built = True

    # -------------------------------------------------------------------------------------------------
    # layouts: both return {stage: {domain: [(path, class)]}}, seen names (label order), unseen names

    def _holdout(self, items: list[tuple[str, str]], domain: int) -> tuple[list, list]:
        """Split ``items`` per class into (train, held-out) with ``val_fraction``; deterministic."""
        by_class: dict[str, list] = {}
        for it in items:
            by_class.setdefault(it[1], []).append(it)
        train, val = [], []
        for cls in sorted(by_class):
            its = sorted(by_class[cls])
            n = len(its)
            k = int(round(n * self.val_fraction))
            if self.val_fraction > 0 and n >= 2:
                k = min(max(k, 1), n - 1)
            else:
                k = 0
            perm = stable_rng(self.split_seed, cls, domain).permutation(n)
            held = set(perm[:k].tolist())
            for i, it in enumerate(its):
                (val if i in held else train).append(it)
        return train, val

    def _scan_folder(self):
        dirs = {d: self.root / name for d, name in DOMAIN_DIRS.items()}
        for d, path in dirs.items():
            if not path.is_dir():
                raise FileNotFoundError(
                    f"{path} does not exist ({DOMAIN_DIRS[d]} folder of the 'folder' layout). "
                    f"Expected layout:\n{FOLDER_LAYOUT}"
                )
        classes = {d: list_class_dirs(p) for d, p in dirs.items()}
        only_sk = sorted(set(classes[SKETCH]) - set(classes[PHOTO]))
        only_ph = sorted(set(classes[PHOTO]) - set(classes[SKETCH]))
        if only_sk or only_ph:
            raise ValueError(
                f"sketch and photo class folders differ under {self.root}: "
                f"sketches but no photos: {only_sk}; photos but no sketches: {only_ph}"
            )
        all_classes = classes[SKETCH]
        if not all_classes:
            raise ValueError(f"no class folders under {dirs[SKETCH]}. Expected layout:\n{FOLDER_LAYOUT}")
        wanted, source = resolve_unseen_classes(self.unseen_spec, self.root)
        unseen = sorted(match_classes(wanted, all_classes, source, str(dirs[SKETCH])))
        seen = [c for c in all_classes if c not in set(unseen)]
        if not unseen:
            raise ValueError(f"the unseen class list ({source}) is empty: the test split would be empty")
        if not seen:
            raise ValueError(f"every class is unseen ({source}): the train split would be empty")
        splits: dict[str, dict[int, list]] = {s: {SKETCH: [], PHOTO: []} for s in STAGES}
        for d, path in dirs.items():
            for cls in all_classes:
                files = [(str(f), cls) for f in list_images(path / cls)]
                if not files:
                    raise ValueError(f"class {cls!r} has no {DOMAIN_DIRS[d]} images in {path / cls}")
                if cls in unseen:
                    splits["test"][d] += files
                else:
                    tr, va = self._holdout(files, d)
                    splits["train"][d] += tr
                    splits["val"][d] += va
        return splits, seen, unseen

    def _scan_sake(self):
        split_dir = Path(self.sake_split_dir).expanduser() if self.sake_split_dir else self.root
        if not split_dir.is_absolute() and not split_dir.exists():
            split_dir = self.root / split_dir
        cname, cname_zero = split_dir / "cname_cid.txt", split_dir / "cname_cid_zero.txt"
        versions = {SKETCH: self.sake_sketch_version, PHOTO: self.sake_photo_version}

        def lst(d: int, part: str) -> Path:
            return split_dir / f"{versions[d]}_filelist_{part}.txt"

        required = [cname, cname_zero] + [lst(d, p) for d in versions for p in ("train", "zero")]
        missing = [str(p) for p in required if not p.exists()]
        if missing:
            raise FileNotFoundError(
                f"SAKE layout: missing {', '.join(missing)}. Expected layout:\n{SAKE_LAYOUT}"
            )
        seen_ids, unseen_ids = _read_cname(cname), _read_cname(cname_zero)
        seen = [seen_ids[i] for i in sorted(seen_ids)]
        unseen = [unseen_ids[i] for i in sorted(unseen_ids)]
        both = sorted(set(seen) & set(unseen))
        if both:
            raise ValueError(
                f"class(es) {both} are in both {cname.name} (seen) and {cname_zero.name} (unseen)"
            )
        if not seen or not unseen:
            raise ValueError(f"empty class list: {cname if not seen else cname_zero}")
        if self.unseen_spec is not None:
            wanted, source = resolve_unseen_classes(self.unseen_spec, self.root)
            if set(match_classes(wanted, unseen, source, str(cname_zero))) != set(unseen):
                raise ValueError(f"unseen_classes ({source}) does not match {cname_zero}")
        splits: dict[str, dict[int, list]] = {s: {SKETCH: [], PHOTO: []} for s in STAGES}
        for d in versions:
            train = _read_filelist(lst(d, "train"), self.root, seen_ids)
            test_list = lst(d, "test")
            if test_list.exists():
                val = _read_filelist(test_list, self.root, seen_ids)
            else:
                train, val = self._holdout(train, d)
                log.warning(
                    "SAKE layout: %s not found; holding out %.0f%% of the seen %s of %s for validation "
                    "(%d images)",
                    test_list.name,
                    100 * self.val_fraction,
                    DOMAIN_DIRS[d],
                    lst(d, "train").name,
                    len(val),
                )
            splits["train"][d], splits["val"][d] = train, val
            splits["test"][d] = _read_filelist(lst(d, "zero"), self.root, unseen_ids)
        # a class whose folder is absent altogether: name it rather than report thousands of missing files
        for stage, doms in splits.items():
            for d, items in doms.items():
                dirs: dict[str, set[str]] = {}
                for p, c in items:
                    dirs.setdefault(c, set()).add(os.path.dirname(p))
                for c, ds in dirs.items():
                    if not any(os.path.isdir(x) for x in ds):
                        raise ValueError(
                            f"class {c!r} of the {stage} {DOMAIN_DIRS[d]} list is not on disk "
                            f"(no folder {sorted(ds)[0]})"
                        )
        return splits, seen, unseen

    # -------------------------------------------------------------------------------------------------

    def _finish(self, splits, seen: list[str], unseen: list[str]) -> None:
        for stage in STAGES:
            for d in (SKETCH, PHOTO):
                if stage == "val" and self.val_fraction == 0 and self.layout == "folder":
                    continue
                if not splits[stage][d]:
                    raise ValueError(f"the {stage} split has no {DOMAIN_DIRS[d]} images")
        all_paths = [p for s in STAGES for d in (SKETCH, PHOTO) for p, _ in splits[s][d]]
        bad = check_images(all_paths, cache_dir=self.root if os.access(self.root, os.W_OK) else None)
        skip = apply_bad_image_policy(bad, self.on_bad_image, len(all_paths))
        if skip:
            for s in STAGES:
                for d in (SKETCH, PHOTO):
                    splits[s][d] = [it for it in splits[s][d] if it[0] not in skip]
                    if not splits[s][d] and (s != "val" or self.val_fraction > 0 or self.layout == "sake"):
                        raise ValueError(f"the {s} split has no readable {DOMAIN_DIRS[d]} images left")
        self.seen_classes = list(seen)
        self.unseen_classes = list(unseen)
        self.class_names = self.seen_classes + self.unseen_classes
        self.num_seen_classes = len(self.seen_classes)
        self.num_classes = len(self.class_names)
        label_of = {c: i for i, c in enumerate(self.class_names)}
        train_tf = {
            d: build_train_transform(
                self.image_size,
                self.mean,
                self.std,
                self.interpolation,
                augment=self.augment,
                hflip=self.hflip,
                affine_degrees=self.affine_degrees,
                affine_translate=self.affine_translate,
                affine_scale=self.affine_scale,
                fill=255 if d == SKETCH else 0,
            )
            for d in (SKETCH, PHOTO)
        }
        eval_tf = build_eval_transform(self.image_size, self.mean, self.std, self.interpolation)
        self._paths: list[str] = []
        self.datasets: dict[str, SampleDataset] = {}
        self.counts: dict[str, dict[str, int]] = {}
        for stage in STAGES:
            paths, labels, domains, indices = [], [], [], []
            for d in (SKETCH, PHOTO):  # queries first, then gallery
                for p, c in splits[stage][d]:
                    indices.append(len(self._paths))
                    self._paths.append(p)
                    paths.append(p)
                    labels.append(label_of[c])
                    domains.append(d)
            tf = train_tf if stage == "train" else {SKETCH: eval_tf, PHOTO: eval_tf}
            self.datasets[stage] = SampleDataset(paths, labels, domains, indices, tf)
            if stage == "train":
                self.datasets[stage].augment_seed = self.split_seed + 1000003 * global_seed() + 1
            self.counts[stage] = {"sketch": domains.count(SKETCH), "photo": domains.count(PHOTO)}
        log.info(
            "sketch/photo data %s: %d seen + %d unseen classes; %s",
            self.root,
            self.num_seen_classes,
            len(self.unseen_classes),
            ", ".join(f"{s} {c['sketch']} sketches / {c['photo']} photos" for s, c in self.counts.items()),
        )

    def path_for_index(self, index: int) -> str:
        """File path of the sample with this ``index`` (any stage)."""
        return self._paths[int(index)]

    # -------------------------------------------------------------------------------------------------
    # loaders

    def _loader_kwargs(self) -> dict[str, Any]:
        return dict(
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def train_sampler(self) -> MixedDomainSampler:
        ds = self.datasets["train"]
        rank, world = dist_info(getattr(self, "trainer", None))
        return MixedDomainSampler(
            ds,
            ds.positions(SKETCH),
            ds.positions(PHOTO),
            self.batch_size,
            self.sketch_fraction,
            seed=self.split_seed + 1000003 * global_seed(),
            num_replicas=world,
            rank=rank,
        )

    def train_dataloader(self):
        self.setup("fit")
        return make_loader(
            self.datasets["train"], sampler=self.train_sampler(), drop_last=True, **self._loader_kwargs()
        )

    def _eval_loader(self, stage: str):
        self.setup(stage)
        ds = self.datasets[stage]
        if len(ds) == 0:
            return []
        return make_loader(
            ds, sampler=eval_sampler(ds, getattr(self, "trainer", None)), **self._loader_kwargs()
        )

    def val_dataloader(self):
        return self._eval_loader("val")

    def test_dataloader(self):
        return self._eval_loader("test")
