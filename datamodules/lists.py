"""Small file readers both DataModules and the generators use: class lists, the shipped unseen-class
lists, image files in a folder. Only the standard library: importing this loads no torch."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
#: the standard zero-shot unseen-class lists shipped in ``datamodules/splits/<name>.txt``
SHIPPED_SPLITS = ("sketchy_split1", "sketchy_split2", "tuberlin", "quickdraw")


def read_class_list(path: str | os.PathLike) -> list[str]:
    """One class per line; blank lines and ``#`` comments ignored."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def shipped_split_path(name: str) -> Path:
    """The file of a shipped unseen-class list (``name`` in :data:`SHIPPED_SPLITS`)."""
    if name not in SHIPPED_SPLITS:
        raise ValueError(f"unknown shipped split {name!r}; choose one of {SHIPPED_SPLITS}")
    ref = resources.files("sketchquant.datamodules") / "splits" / f"{name}.txt"
    return Path(str(ref))


def read_shipped_split(name: str) -> list[str]:
    """The unseen classes of a shipped list, e.g. ``read_shipped_split("sketchy_split2")``."""
    return read_class_list(shipped_split_path(name))


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (by extension), sorted by name; hidden files ignored."""
    return sorted(
        p
        for p in Path(folder).iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )


def list_class_dirs(folder: Path) -> list[str]:
    """Names of the sub-folders of ``folder`` (one per class), sorted; hidden ones ignored."""
    return sorted(p.name for p in Path(folder).iterdir() if p.is_dir() and not p.name.startswith("."))
