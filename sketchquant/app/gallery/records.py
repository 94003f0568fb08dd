"""Gallery records: errors, result dataclasses, the photo collection (a folder or a list file)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from dataclasses import asdict, dataclass, field
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
BAD_IMAGE_POLICIES = ("skip", "error")


class GalleryError(ValueError):
    """A gallery that cannot be built, opened or searched as asked; the message says why."""


class BadGalleryImageWarning(UserWarning):
    """Unreadable files left out of a gallery."""


@dataclass
class Hit:
    """One search result. ``distance`` is the index's score: squared L2 for the indexes (raw, proto,
    fused features, uint8 codes), the evaluator's fused distance with ``fusion=distance``."""

    rank: int
    index: int
    path: str
    relpath: str
    distance: float
    label: str | None = None


@dataclass
class QueryResult:
    query: str
    features: str
    hits: list[Hit] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BuildReport:
    path: str
    images: int
    encoded: int
    reused: int
    skipped: list[str]
    seconds: float
    features: list[str]
    index_type: str
    bytes_on_disk: int


# --------------------------------------------------------------------------------------------------
# small helpers


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def version() -> str:
    try:
        return package_version("sketchquant")
    except Exception:  # pragma: no cover
        return "unknown"


# --------------------------------------------------------------------------------------------------
# the image collection


@dataclass
class Collection:
    """The files of a gallery: absolute paths, paths relative to ``root``, labels (or None), size, mtime."""

    root: Path
    paths: list[str]
    relpaths: list[str]
    labels: list[str | None]
    sizes: list[int]
    mtimes: list[int]


def _stat_items(paths: list[Path]) -> tuple[list[int], list[int]]:
    sizes, mtimes = [], []
    for p in paths:
        try:
            st = p.stat()
            sizes.append(int(st.st_size))
            mtimes.append(int(st.st_mtime_ns))
        except OSError:
            sizes.append(-1)
            mtimes.append(-1)
    return sizes, mtimes


def _rel(p: Path, root: Path) -> str:
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


def list_images(images: str | os.PathLike) -> Collection:
    """A folder (walked recursively for jpg, jpeg, png, webp, bmp; sorted paths; the label is the first
    sub-folder when the image sits in one) or a list file (one path per line, or CSV ``path,labels``;
    relative paths are relative to the list file; its order is kept)."""
    src = Path(images).expanduser()
    if src.is_dir():
        root = src.resolve()
        found = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not found:
            raise GalleryError(f"no images ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) under {src}")
        rel = [p.relative_to(root).as_posix() for p in found]
        labels = [r.split("/", 1)[0] if "/" in r else None for r in rel]
        if not any(labels):
            labels = [None] * len(rel)
        sizes, mtimes = _stat_items(found)
        return Collection(root, [str(p) for p in found], rel, labels, sizes, mtimes)
    if not src.is_file():
        raise FileNotFoundError(f"images {src} is neither a folder nor a list file")
    root = src.resolve().parent
    paths: list[Path] = []
    labels: list[str | None] = []
    for n, line in enumerate(src.read_text(encoding="utf-8").splitlines()):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path, _, label = line.partition(",") if "," in line else (line, "", "")
        if n == 0 and path.strip().lower() == "path":
            continue  # a CSV header
        p = Path(path.strip()).expanduser()
        paths.append(p if p.is_absolute() else root / p)
        labels.append(label.strip() or None)
    if not paths:
        raise GalleryError(f"list file {src} names no images")
    sizes, mtimes = _stat_items(paths)
    return Collection(root, [str(p) for p in paths], [_rel(p, root) for p in paths], labels, sizes, mtimes)
