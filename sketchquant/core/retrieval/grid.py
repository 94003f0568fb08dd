"""A retrieval grid for people: each row a query, then its top-k gallery items with green (relevant) or
red (not relevant) borders. Plain PIL; used by the evaluation callback and ``search``."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw

GREEN = (30, 170, 60)
RED = (210, 40, 40)
GREY = (90, 90, 90)


def _thumb(path: str, size: int) -> Image.Image:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            canvas = Image.new("RGB", (size, size), (255, 255, 255))
            canvas.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
            return canvas
    except OSError:
        canvas = Image.new("RGB", (size, size), (128, 128, 128))
        ImageDraw.Draw(canvas).line((0, 0, size, size), fill=RED, width=3)
        return canvas


def retrieval_grid(
    rows: Sequence[tuple[str, Sequence[tuple[str, bool]]]], size: int = 64, border: int = 4, gap: int = 12
) -> Image.Image:
    """``rows``: ``[(query_path, [(gallery_path, relevant), ...]), ...]`` → one RGB image."""
    if not rows:
        raise ValueError("retrieval_grid needs at least one row")
    cell = size + 2 * border
    cols = 1 + max(len(items) for _, items in rows)
    width = cols * cell + gap + border
    height = len(rows) * (cell + border) + border
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    for r, (query, items) in enumerate(rows):
        y = border + r * (cell + border)
        sheet.paste(Image.new("RGB", (cell, cell), GREY), (0, y))
        sheet.paste(_thumb(query, size), (border, y + border))
        for c, (path, relevant) in enumerate(items):
            x = cell + gap + c * cell
            sheet.paste(Image.new("RGB", (cell, cell), GREEN if relevant else RED), (x, y))
            sheet.paste(_thumb(path, size), (x + border, y + border))
    return sheet
