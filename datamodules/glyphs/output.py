"""Atomic output of a generated dataset folder: build in ``<out>.tmp-XXXX``, write the manifest, rename.

A folder whose manifest (kind, generator version, parameters) matches is reused as it is.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

GENERATOR_VERSION = 2
#: the generator version at which each kind's bytes last changed (recorded in its manifest): a folder made
#: by an older version of an unchanged kind stays valid, a changed kind is regenerated or refused
KIND_VERSIONS = {"sketch_photo": 1, "scenes": 1, "mosaics": 2, "digits": 2, "digit_drawings": 2}
MANIFEST = "dataset.json"


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
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(min(workers, len(tasks))) as pool:
        return pool.map(fn, tasks)


def write_image_lists(tmp: Path, names: list[str], bounds: dict, labels_of) -> None:
    """``classes.txt`` and ``<split>.csv`` lines ``images/00000.png,name;name`` for image ids in
    ``bounds[split] = (start, stop)``; ``labels_of(i)`` gives image ``i``'s class ids."""
    (tmp / "classes.txt").write_text("".join(n + "\n" for n in names))
    for split, (a, b) in bounds.items():
        lines = [f"images/{i:05d}.png," + ";".join(names[c] for c in labels_of(i)) for i in range(a, b)]
        (tmp / f"{split}.csv").write_text("".join(x + "\n" for x in lines))


def split_bounds(num_train: int, num_query: int, num_database: int) -> dict[str, tuple[int, int]]:
    """Image ids of the three splits: train first, then query, then database."""
    return {
        "train": (0, num_train),
        "query": (num_train, num_train + num_query),
        "database": (num_train + num_query, num_train + num_query + num_database),
    }
