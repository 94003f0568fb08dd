"""Images as RGB, torch-free (the contact sheet and the page use it without importing torch)."""

from __future__ import annotations

from PIL import Image

__all__ = ["to_rgb", "load_rgb"]


def to_rgb(image: Image.Image) -> Image.Image:
    """A PIL image as RGB; transparent pixels (common in sketch PNGs) become white."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
        canvas.alpha_composite(image)
        return canvas.convert("RGB")
    return image.convert("RGB")


def load_rgb(path: str) -> Image.Image:
    """Open an image file as RGB (:func:`to_rgb`)."""
    with Image.open(path) as im:
        im.load()
        return to_rgb(im)
