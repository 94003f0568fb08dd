"""Image retrieval data for method A (single- or multi-label): :class:`ImageDataModule`.

Layouts:

- ``csv``: ``<root>/{train,query,database}.csv``, lines ``path,label1;label2;...`` (path relative to the
  root, labels are class names; a header line is optional; paths must not contain commas). Class order
  from ``<root>/classes.txt`` when present, else sorted names.
- ``folder``: ``<root>/{train,query,database}/<class>/*`` (single-label).

Stages (model selection never sees the test data):

- train: the training images (``domain=GALLERY``) minus the validation part;
- validate: the validation images only: ``val_list`` when given (a CSV list like the others, or for the
  folder layout a folder ``<root>/<val_list>/<class>/*``), else ``val_fraction`` of the training list
  held out (drawn with ``split_seed``). They are split once into queries (a quarter, ``domain=QUERY``) and
  a database (the rest, ``domain=GALLERY``) ranked with the same protocol as the test;
- test: the query split (``domain=QUERY``) followed by the database (``domain=GALLERY``) in one loader.
  Nothing but test (and ``eval_dataset``) reads them.

Labels are ``int64`` class ids (single-label) or ``float32`` multi-hot vectors (multi-label; detected from
the data unless given).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from sketchquant.core.batch import GALLERY, QUERY

from .base import RetrievalDataModule
from .common import stable_rng, tree
from .config import ImageDataConfig
from .lists import list_class_dirs, list_images, read_class_list

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


class ImageDataModule(RetrievalDataModule):
    """Train / query / database image sets for method A; see the module docstring."""

    config_class = ImageDataConfig
    layouts = {"csv": CSV_LAYOUT, "folder": FOLDER_LAYOUT}
    default_generator = "scenes"
    eval_splits = {
        "train": ("train", None),
        "val": ("val", None),
        "query": ("eval", QUERY),
        "database": ("eval", GALLERY),
    }
    val_name, test_name = "val", "eval"

    def check_options(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    @property
    def lists(self) -> dict[str, str]:
        lists = {"train": self.train_list, "query": self.query_list, "database": self.database_list}
        if self.val_list:
            lists["val"] = self.val_list
        return lists

    def _holdout(self, rows: list) -> tuple[list, list]:
        """``(train, validation)`` rows: ``val_fraction`` of ``rows`` (at least 2 when > 0, so validation
        has a query and a database), drawn with ``split_seed``; validation in drawn order."""
        n = len(rows)
        k = int(round(n * self.val_fraction))
        k = min(max(k, 2), n - 1) if self.val_fraction > 0 and n >= 3 else 0
        perm = stable_rng(self.split_seed, "val").permutation(n)[:k].tolist()
        held = set(perm)
        return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in perm]

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
        folders = {split: split for split in SPLITS}
        if self.val_list:
            folders["val"] = self.val_list
        for split, name in folders.items():
            d = self.root / name
            if not d.is_dir():
                raise FileNotFoundError(f"{d} does not exist. Expected layout:\n{FOLDER_LAYOUT}")
            rows[split] = [(str(f), [c]) for c in list_class_dirs(d) for f in list_images(d / c)]
        return rows

    def build(self) -> None:
        rows = self._scan_csv() if self.layout == "csv" else self._scan_folder()
        for split in rows:
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
        multi = self.config.multi_label
        if multi is None:
            multi = any(len(labs) != 1 for r in rows.values() for _, labs in r)
        elif not multi:
            for split, r in rows.items():
                for p, labs in r:
                    if len(labs) != 1:
                        raise ValueError(
                            f"multi_label=False but {p} in the {split} split has {len(labs)} labels {labs}"
                        )
        skip = self.drop_bad_images([p for r in rows.values() for p, _ in r])
        if skip:
            for split in rows:
                rows[split] = [row for row in rows[split] if row[0] not in skip]
                if not rows[split]:
                    raise ValueError(f"the {split} split has no readable images left")
        if "val" not in rows:
            rows["train"], rows["val"] = self._holdout(rows["train"])
        self.class_names = list(classes)
        self.num_classes = len(classes)
        self.multi_label = bool(multi)
        cid = {c: i for i, c in enumerate(classes)}

        def labelled(split: str, domain: int) -> list[tuple[str, Any, int]]:
            out = []
            for p, labs in rows[split]:
                ids = [cid[c] for c in labs]
                out.append((p, ids if self.multi_label else ids[0], domain))
            return out

        kw = dict(multi_label=self.multi_label, num_classes=self.num_classes)
        train_tf, eval_tf = self.train_transform(), self.eval_transform()
        self.add_dataset(
            "train", labelled("train", GALLERY), {QUERY: train_tf, GALLERY: train_tf}, train=True, **kw
        )
        val = rows["val"]
        n_query = max(1, round(len(val) / 4)) if len(val) >= 2 else len(val)
        self.add_dataset(
            "val",
            labelled("val", QUERY)[:n_query] + labelled("val", GALLERY)[n_query:],
            {QUERY: eval_tf, GALLERY: eval_tf},
            **kw,
        )
        self.add_dataset(
            "eval",
            labelled("query", QUERY) + labelled("database", GALLERY),
            {QUERY: eval_tf, GALLERY: eval_tf},
            **kw,
        )
        self.counts = {s: len(rows[s]) for s in ("train", "val", "query", "database")}
        log.info(
            "image data %s: %d classes (%s-label); train %d, validation %d (%s: %d queries / %d database), "
            "query %d, database %d",
            self.root,
            self.num_classes,
            "multi" if self.multi_label else "single",
            self.counts["train"],
            len(val),
            f"list {self.val_list}" if self.val_list else f"{self.val_fraction:g} of train held out",
            n_query,
            len(val) - n_query,
            self.counts["query"],
            self.counts["database"],
        )
        if not val:
            log.warning("no validation images (val_fraction=0 and no val_list): validation is skipped")
