"""Generated dataset folders: the steps every generator shares.

- :func:`atomic_generate`: build in ``<out>.tmp-XXXX``, write the ``dataset.json`` manifest, rename; a folder
  whose manifest (kind, generator version, parameters) matches is reused as it is.
- :func:`make_csv_dataset` (method A's multi-label sets: ``images/`` + ``{train,query,database}.csv``) and
  :func:`make_folder_dataset` (method B's ``sketch/<class>/`` + ``photo/<class>/`` + ``unseen_classes.txt``):
  the whole generator around a kind's drawing code, work split over processes by :func:`run_tasks`.
- :class:`OutputSettings` and its two layouts' bases :class:`CsvSettings` and :class:`FolderSettings`: each
  generator's settings are a dataclass built on one of them; ``make_<kind>(out_dir, **settings)`` checks its
  keywords with :meth:`OutputSettings.of`, and ``sketchquant data make`` reads the options from its fields.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Self

from .render import save_png

GENERATOR_VERSION = 2
#: the generator version at which each kind's bytes last changed (recorded in its manifest): a folder made
#: by an older version of an unchanged kind stays valid, a changed kind is regenerated or refused
KIND_VERSIONS = {
    "sketch_photo": 1,
    "scenes": 1,
    "mosaics": 2,
    "digits": 2,
    "digit_drawings": 2,
    "emoji_drawings": 2,
}
MANIFEST = "dataset.json"
#: the two domains of a sketch/photo folder, in the order they are listed
DOMAINS = ("sketch", "photo")


def read_manifest(out: Path) -> dict | None:
    try:
        return json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def manifest_matches(man: dict | None, kind: str, params: dict) -> bool:
    return (
        man is not None
        and man.get("kind") == kind
        and man.get("version") == KIND_VERSIONS.get(kind, GENERATOR_VERSION)
        and man.get("params") == json.loads(json.dumps(params))
    )


def atomic_generate(out_dir, kind: str, params: dict, overwrite: bool, build) -> Path:
    """``build(tmp)`` fills a temporary folder beside ``out_dir`` and returns manifest fields; the folder is
    then renamed onto ``out_dir`` in one step (a reader never sees half a dataset)."""
    out = Path(out_dir).expanduser().absolute()
    if out.exists():
        man = read_manifest(out)
        if not overwrite:
            if manifest_matches(man, kind, params):
                return out
            raise FileExistsError(
                f"{out} exists but is not the {kind} dataset asked for (manifest {out / MANIFEST} "
                f"{'missing' if man is None else 'differs'}); pass overwrite=True or pick another folder"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        manifest = build(tmp)
        manifest = {
            "format": "sketchquant-glyphs",
            "kind": kind,
            "version": KIND_VERSIONS.get(kind, GENERATOR_VERSION),
            "params": params,
            **manifest,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if out.exists() and overwrite:
            shutil.rmtree(out)
        try:
            os.rename(tmp, out)
        except OSError:
            # someone else finished first: fine if theirs is the same dataset
            if manifest_matches(read_manifest(out), kind, params):
                shutil.rmtree(tmp, ignore_errors=True)
                return out
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def run_tasks(fn, tasks: list, workers: int) -> list:
    """``[fn(t) for t in tasks]``, over ``workers`` spawned processes when > 1 (same results either way)."""
    if workers <= 1 or len(tasks) <= 1:
        return [fn(t) for t in tasks]
    with mp.get_context("spawn").Pool(min(workers, len(tasks))) as pool:
        return pool.map(fn, tasks)


def write_lines(path: Path, names) -> None:
    """One name a line (``classes.txt``, ``unseen_classes.txt``)."""
    path.write_text("".join(f"{n}\n" for n in names))


def write_image_lists(tmp: Path, names: list[str], bounds: dict, labels_of) -> None:
    """``classes.txt`` and ``<split>.csv`` lines ``images/00000.png,name;name`` for image ids in
    ``bounds[split] = (start, stop)``; ``labels_of(i)`` gives image ``i``'s class ids."""
    write_lines(tmp / "classes.txt", names)
    for split, (a, b) in bounds.items():
        lines = [f"images/{i:05d}.png," + ";".join(names[c] for c in labels_of(i)) for i in range(a, b)]
        write_lines(tmp / f"{split}.csv", lines)


def split_bounds(num_train: int, num_query: int, num_database: int) -> dict[str, tuple[int, int]]:
    """Image ids of the three splits: train first, then query, then database."""
    return {
        "train": (0, num_train),
        "query": (num_train, num_train + num_query),
        "database": (num_train + num_query, num_train + num_query + num_database),
    }


def params_of(arguments: dict) -> dict:
    """A generator's manifest ``params``: its settings (a dict of them, or a function's ``locals()``) but
    ``out_dir``, ``workers`` and ``overwrite`` (they do not change the bytes), each an ``int`` or ``None``."""
    skip = ("out_dir", "workers", "overwrite")
    return {k: None if v is None else int(v) for k, v in arguments.items() if k not in skip}


@dataclass(frozen=True)
class OutputSettings:
    """What every generator takes: the image size and the seed (with the kind's own settings, the
    manifest's ``params``), and ``workers`` (processes) and ``overwrite`` (they leave the bytes alone)."""

    image_size: int = 64
    seed: int = 0
    workers: int = 1
    overwrite: bool = False

    @classmethod
    def of(cls, settings: dict[str, Any]) -> Self:
        """``cls(**settings)``; ``TypeError`` naming the unknown keys and the allowed ones."""
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(settings) - set(allowed))
        if unknown:
            raise TypeError(f"unknown {cls.__name__} key(s) {unknown}; allowed: {', '.join(sorted(allowed))}")
        return cls(**settings)

    @property
    def params(self) -> dict:
        """The manifest's ``params`` (:func:`params_of` the fields)."""
        return params_of(asdict(self))


@dataclass(frozen=True)
class CsvSettings(OutputSettings):
    """A CSV dataset's: the image counts of its three splits (:func:`make_csv_dataset`)."""

    num_train: int = 1000
    num_query: int = 200
    num_database: int = 1000


@dataclass(frozen=True)
class FolderSettings(OutputSettings):
    """A sketch/photo folder's: the images per class of each domain (:func:`make_folder_dataset`)."""

    photos_per_class: int = 40
    sketches_per_class: int = 40


def _save_pngs(draw, ids, name_of) -> int:
    for i in ids:
        save_png(draw(i), name_of(i))
    return len(ids)


def _csv_chunk(args) -> int:
    setup, root, start, stop = args
    return _save_pngs(setup(), range(start, stop), lambda i: Path(root) / "images" / f"{i:05d}.png")


def make_csv_dataset(
    out_dir,
    kind: str,
    settings: CsvSettings,
    *,
    names: list[str],
    setup,
    labels_of,
    manifest: dict | None = None,
) -> Path:
    """A multi-label CSV dataset: ``images/00000.png`` …, ``{train,query,database}.csv``, ``classes.txt``.

    ``settings`` give the split sizes, ``workers``, ``overwrite`` and the manifest's ``params``. ``setup()``
    runs once per chunk of image ids, in the process that draws them, and returns ``draw(i) -> PIL image``;
    it must pickle (a module-level function or a ``functools.partial`` of one) when ``workers`` > 1.
    ``labels_of(i)`` gives image ``i``'s class ids (indices into ``names``); ``manifest`` adds fields to
    ``dataset.json``.
    """
    params, workers = settings.params, settings.workers
    bounds = split_bounds(params["num_train"], params["num_query"], params["num_database"])
    total = bounds["database"][1]

    def build(tmp: Path) -> dict:
        (tmp / "images").mkdir()
        chunk = max(1, math.ceil(total / max(1, workers) / 4))  # about four chunks a worker
        run_tasks(
            _csv_chunk, [(setup, str(tmp), s, min(s + chunk, total)) for s in range(0, total, chunk)], workers
        )
        write_image_lists(tmp, names, bounds, labels_of)
        counts = {"classes": len(names), **{split: b - a for split, (a, b) in bounds.items()}}
        return {"layout": "csv", "classes": names, "counts": counts, **(manifest or {})}

    return atomic_generate(out_dir, kind, params, settings.overwrite, build)


def _folder_task(args) -> int:
    setup, root, domain, c, name, ids = args
    folder = Path(root) / domain / name
    folder.mkdir(parents=True, exist_ok=True)
    return _save_pngs(setup(c, domain), ids, lambda i: folder / f"{i:04d}.png")


def make_folder_dataset(
    out_dir,
    kind: str,
    settings: OutputSettings,
    *,
    classes: list[str],
    unseen: list[str],
    setup,
    ids,
    manifest: dict | Callable[[], dict] | None = None,
    class_list: bool = False,
) -> Path:
    """A sketch/photo folder: ``sketch/<class>/0000.png`` …, ``photo/<class>/…``, ``unseen_classes.txt``
    (and ``classes.txt`` when ``class_list``); ``settings`` give ``workers``, ``overwrite`` and the
    manifest's ``params``.

    ``ids(c, domain)`` lists the image ids (file names ``{id:04d}.png``) of class index ``c`` in ``domain``
    (``"sketch"`` or ``"photo"``); ``setup(c, domain)`` runs once per class and domain, in the process that
    draws them, and returns ``draw(id) -> PIL image`` (it must pickle when ``workers`` > 1).
    ``dataset.json`` gets ``layout``, ``classes``, ``counts`` (images per domain) and the ``manifest`` fields
    (a ``counts`` there replaces the default; a callable is called only when the folder is built).
    """

    def build(tmp: Path) -> dict:
        tasks = [
            (setup, str(tmp), d, c, name, [int(i) for i in ids(c, d)])
            for c, name in enumerate(classes)
            for d in DOMAINS
        ]
        done = run_tasks(_folder_task, tasks, settings.workers)
        counts = {d: sum(n for t, n in zip(tasks, done) if t[2] == d) for d in DOMAINS}
        write_lines(tmp / "unseen_classes.txt", unseen)
        if class_list:
            write_lines(tmp / "classes.txt", classes)
        extra = manifest() if callable(manifest) else manifest
        return {"layout": "folder", "classes": classes, "counts": counts, **(extra or {})}

    return atomic_generate(out_dir, kind, settings.params, settings.overwrite, build)
