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
from pathlib import Path

from torchvision import transforms as T

from sketchquant.core.batch import PHOTO, SKETCH

from .base import RetrievalDataModule
from .common import MixedDomainSampler, dist_info, global_seed, match_classes, stable_rng, tree
from .config import SketchPhotoDataConfig
from .lists import SHIPPED_SPLITS, list_class_dirs, list_images, read_class_list, shipped_split_path

log = logging.getLogger("sketchquant.data")

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


class SketchPhotoDataModule(RetrievalDataModule):
    """Seen/unseen sketch and photo splits for zero-shot SBIR; see the module docstring."""

    config_class = SketchPhotoDataConfig
    layouts = {"folder": FOLDER_LAYOUT, "sake": SAKE_LAYOUT}
    default_generator = "sketch_photo"
    eval_splits = {stage: (stage, None) for stage in STAGES}

    def check_options(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not 0.0 <= self.photo_grayscale <= 1.0:
            raise ValueError(f"photo_grayscale must be in [0, 1], got {self.photo_grayscale}")
        if not 0.0 <= self.val_classes < 1.0:
            raise ValueError(f"val_classes must be in [0, 1), got {self.val_classes}")
        if self.val_classes and self.layout != "folder":
            raise ValueError(
                "val_classes holds out whole classes of the folder layout; the sake layout has its own lists"
            )
        if not 0.0 <= self.sketch_fraction <= 1.0:
            raise ValueError(f"sketch_fraction must be in [0, 1], got {self.sketch_fraction}")
        self.val_fraction = float(self.val_fraction)
        self.sketch_fraction = float(self.sketch_fraction)
        self.split_seed = int(self.split_seed)
        self.unseen_spec = self.config.unseen_classes
        self.held_out_classes: list[str] = []

    def build(self) -> None:
        if self.layout == "folder":
            splits, seen, unseen = self._scan_folder()
        else:
            splits, seen, unseen = self._scan_sake()
        self._finish(splits, seen, unseen)

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
        held = self._held_out_classes(seen)
        splits: dict[str, dict[int, list]] = {s: {SKETCH: [], PHOTO: []} for s in STAGES}
        for d, path in dirs.items():
            for cls in all_classes:
                files = [(str(f), cls) for f in list_images(path / cls)]
                if not files:
                    raise ValueError(f"class {cls!r} has no {DOMAIN_DIRS[d]} images in {path / cls}")
                if cls in unseen:
                    splits["test"][d] += files
                elif cls in held:
                    splits["val"][d] += files
                else:
                    tr, va = self._holdout(files, d)
                    splits["train"][d] += tr
                    splits["val"][d] += va
        # held-out classes are labelled after the trained ones (the classifier knows only those)
        return splits, [c for c in seen if c not in held] + held, unseen

    def _held_out_classes(self, seen: list[str]) -> list[str]:
        """``val_classes`` of the seen classes, drawn with ``split_seed`` (none when it is 0)."""
        if not self.val_classes:
            return []
        k = max(2, int(round(len(seen) * self.val_classes)))
        if len(seen) - k < 2:
            raise ValueError(
                f"val_classes={self.val_classes} holds out {k} of the {len(seen)} seen classes: "
                "at least 2 must stay for training"
            )
        pick = stable_rng(self.split_seed, "val_classes").permutation(len(seen))[:k]
        self.held_out_classes = sorted(seen[i] for i in pick)
        return self.held_out_classes

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
            elif self.val_fraction == 0:  # SAKE: train on every seen image, validate without this domain
                val = []
                log.info(
                    "SAKE layout: %s not found and val_fraction=0: no %s in validation",
                    test_list.name,
                    DOMAIN_DIRS[d],
                )
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
                if stage == "val" and self.val_fraction == 0:
                    continue
                if not splits[stage][d]:
                    raise ValueError(f"the {stage} split has no {DOMAIN_DIRS[d]} images")
        skip = self.drop_bad_images([p for s in STAGES for d in (SKETCH, PHOTO) for p, _ in splits[s][d]])
        if skip:
            for s in STAGES:
                for d in (SKETCH, PHOTO):
                    splits[s][d] = [it for it in splits[s][d] if it[0] not in skip]
                    if not splits[s][d] and (s != "val" or self.val_fraction > 0):
                        raise ValueError(f"the {s} split has no readable {DOMAIN_DIRS[d]} images left")
        held = self.held_out_classes
        self.seen_classes = [c for c in seen if c not in held]
        self.unseen_classes = list(unseen)
        self.class_names = self.seen_classes + list(held) + self.unseen_classes
        self.num_seen_classes = len(self.seen_classes)
        self.num_classes = len(self.class_names)
        label_of = {c: i for i, c in enumerate(self.class_names)}
        train_tf = {d: self.train_transform(fill=255 if d == SKETCH else 0) for d in (SKETCH, PHOTO)}
        if self.photo_grayscale:
            train_tf[PHOTO] = T.Compose([T.RandomGrayscale(self.photo_grayscale), train_tf[PHOTO]])
        eval_tf = self.eval_transform()
        self.counts: dict[str, dict[str, int]] = {}
        for stage in STAGES:
            # queries first, then gallery
            rows = [(p, label_of[c], d) for d in (SKETCH, PHOTO) for p, c in splits[stage][d]]
            tf = train_tf if stage == "train" else {SKETCH: eval_tf, PHOTO: eval_tf}
            self.add_dataset(stage, rows, tf, train=stage == "train")
            self.counts[stage] = {"sketch": len(splits[stage][SKETCH]), "photo": len(splits[stage][PHOTO])}
        log.info(
            "sketch/photo data %s: %d seen + %d unseen classes; %s",
            self.root,
            self.num_seen_classes,
            len(self.unseen_classes),
            ", ".join(f"{s} {c['sketch']} sketches / {c['photo']} photos" for s, c in self.counts.items()),
        )

    # -------------------------------------------------------------------------------------------------
    # training order

    def train_seed(self) -> int:
        return self.split_seed + 1000003 * global_seed()

    def train_sampler(self) -> MixedDomainSampler:
        """Every batch holds ``round(batch_size * sketch_fraction)`` sketches; shards by rank itself."""
        ds = self.datasets["train"]
        rank, world = dist_info(getattr(self, "trainer", None))
        return MixedDomainSampler(
            ds,
            ds.positions(SKETCH),
            ds.positions(PHOTO),
            self.batch_size,
            self.sketch_fraction,
            seed=self.train_seed(),
            num_replicas=world,
            rank=rank,
        )
