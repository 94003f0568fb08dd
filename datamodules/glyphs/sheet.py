"""A contact sheet (PNG grid) of a generated or user dataset, for a person to look at."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageDraw

from sketchquant.core.io import atomic_write

from ..lists import list_images, read_class_list
from ..rgb import load_rgb


def _list_images(folder: Path) -> list[Path]:
    return list_images(folder) if folder.is_dir() else []


def _thumb(path: Path, cell: int) -> Image.Image:
    try:
        im = load_rgb(str(path))
    except Exception:
        return Image.new("RGB", (cell, cell), (255, 0, 255))
    im.thumbnail((cell, cell))
    canvas = Image.new("RGB", (cell, cell), (255, 255, 255))
    canvas.paste(im, ((cell - im.size[0]) // 2, (cell - im.size[1]) // 2))
    return canvas


def make_contact_sheet(
    data_dir: str | os.PathLike,
    out_png: str | os.PathLike,
    *,
    classes: int = 8,
    per_domain: int = 4,
    cell: int = 64,
) -> Path:
    """A PNG grid for a person to look at.

    Sketch/photo folder datasets: one row per class (half seen, half unseen where an
    ``unseen_classes.txt`` exists), ``per_domain`` sketches then ``per_domain`` photos, labelled.
    Scene datasets (``train.csv``): ``classes`` rows of ``per_domain * 2`` training images with their labels.
    """
    root = Path(data_dir)
    pad, label_w, text_h = 4, 150, 12
    rows: list[tuple[str, list[Path], list[str]]] = []
    if (root / "sketch").is_dir() and (root / "photo").is_dir():
        names = sorted(p.name for p in (root / "sketch").iterdir() if p.is_dir())
        unseen_file = root / "unseen_classes.txt"
        unseen = read_class_list(unseen_file) if unseen_file.exists() else []
        seen = [n for n in names if n not in set(unseen)]
        picked = [(n, "seen") for n in seen[: max(1, classes - min(len(unseen), classes // 2))]]
        picked += [(n, "unseen") for n in unseen[: classes - len(picked)] if n in names]
        for name, tag in picked:
            sk = _list_images(root / "sketch" / name)[:per_domain]
            ph = _list_images(root / "photo" / name)[:per_domain]
            rows.append((f"{name}\n({tag})", sk + ph, []))
        header = f"{root.name}: sketches | photos"
    elif (root / "train.csv").exists():
        lines = [ln for ln in (root / "train.csv").read_text().splitlines() if ln.strip()]
        if lines and not (root / lines[0].split(",")[0]).exists():
            lines = lines[1:]
        n = 2 * per_domain
        for r in range(classes):
            chunk = lines[r * n : (r + 1) * n]
            if not chunk:
                break
            paths = [root / ln.split(",", 1)[0] for ln in chunk]
            caps = [
                ln.split(",", 1)[1].replace("glyph_", "").replace(";", ",") if "," in ln else ""
                for ln in chunk
            ]
            rows.append((f"train {r * n}-{r * n + len(chunk) - 1}", paths, caps))
        header = f"{root.name}: training scenes (labels under each image)"
    else:
        raise FileNotFoundError(f"{root} has neither sketch/ + photo/ folders nor a train.csv")
    ncols = max((len(r[1]) for r in rows), default=1)
    row_h = cell + text_h + pad
    width = label_w + ncols * (cell + pad) + pad
    sheet = Image.new("RGB", (width, 20 + len(rows) * row_h + pad), (235, 235, 235))
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 4), header, fill=(0, 0, 0))
    for r, (label, paths, caps) in enumerate(rows):
        y = 20 + r * row_h
        draw.multiline_text((pad, y + cell // 3), label, fill=(0, 0, 0))
        for j, p in enumerate(paths):
            x = label_w + j * (cell + pad)
            sheet.paste(_thumb(p, cell), (x, y))
            if caps:
                draw.text((x, y + cell + 1), caps[j][:12], fill=(0, 0, 0))
    out = Path(out_png)
    atomic_write(out, lambda tmp: sheet.save(tmp, format="PNG"), suffix=".png")
    return out
