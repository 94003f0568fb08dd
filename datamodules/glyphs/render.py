"""Drawing glyphs: photo-style (filled, coloured, textured, on clutter) and sketch-style (wobbly outlines)."""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .shapes import (
    PRIMITIVES,
    SUPERSAMPLE,
    primitive_outline,
    random_transform,
    resample,
    smooth_noise,
    to_pixels,
)


def _hsv(rng, s=(0.45, 1.0), v=(0.45, 1.0)) -> np.ndarray:
    h, sat, val = rng.uniform(0, 1), rng.uniform(*s), rng.uniform(*v)
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = val * (1 - sat), val * (1 - f * sat), val * (1 - (1 - f) * sat)
    rgb = [(val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val), (val, p, q)][i]
    return np.array(rgb) * 255


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    return yy, xx


def _lowfreq(rng, size: int, cells: int) -> np.ndarray:
    small = rng.uniform(0, 255, (cells, cells)).astype(np.uint8)
    big = Image.fromarray(small, "L").resize((size, size), Image.BICUBIC)
    return np.asarray(big, dtype=np.float32) / 255.0 - 0.5


def _layer(size: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    """A transparent supersampled RGBA layer to draw on; :func:`_flatten` brings it down to ``size``."""
    big = size * SUPERSAMPLE
    layer = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    return layer, ImageDraw.Draw(layer)


def _flatten(base: Image.Image, layer: Image.Image, tex: np.ndarray | None = None) -> Image.Image:
    small = layer.resize(base.size, Image.BOX)  # premultiplied-alpha resize: anti-aliased edges
    if tex is not None:
        arr = np.asarray(small, dtype=np.float32)
        arr[..., :3] *= tex
        small = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGBA")
    base.alpha_composite(small)
    return base


def _rgba(col: np.ndarray) -> tuple[int, int, int, int]:
    return (int(col[0]), int(col[1]), int(col[2]), 255)


def background(rng, size: int, clutter: tuple[int, int] = (1, 5)) -> Image.Image:
    """Gradient + low-frequency noise + distractor shapes made of the class primitives (RGBA)."""
    c0, c1 = _hsv(rng, (0.0, 0.7), (0.3, 1.0)), _hsv(rng, (0.0, 0.7), (0.3, 1.0))
    ang = rng.uniform(0, 2 * np.pi)
    yy, xx = _grid(size)
    g = math.cos(ang) * xx + math.sin(ang) * yy
    g = ((g - g.min()) / max(float(g.max() - g.min()), 1e-6))[..., None]
    bg = c0.astype(np.float32) * (1 - g) + c1.astype(np.float32) * g
    bg += _lowfreq(rng, size, int(rng.integers(3, 9)))[..., None] * np.float32(rng.uniform(30, 90))
    base = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB").convert("RGBA")
    layer, draw = _layer(size)
    big = size * SUPERSAMPLE
    for _ in range(int(rng.integers(*clutter))):
        kind = PRIMITIVES[int(rng.integers(len(PRIMITIVES)))]
        sides = int(rng.integers(3, 7))
        p = {
            "sides": sides,
            "phase": 0.0,
            "radii": np.ones(sides),
            "points": 5,
            "inner": 0.5,
            "start": 0.0,
            "span": float(rng.uniform(1, 5)),
            "ys": rng.uniform(-0.5, 0.5, 3),
        }
        pts, closed = primitive_outline(kind, p, n=24)
        a, b = random_transform(rng, big, rot=180, scale=(0.08, 0.25), shift=0.5)
        xy = to_pixels(pts, a, b)
        col = _rgba(_hsv(rng, (0.0, 0.6), (0.25, 0.85)))
        if closed and rng.uniform() < 0.6:
            draw.polygon(xy, fill=col)
        else:
            draw.line(xy + xy[:2] if closed else xy, fill=col, width=int(rng.integers(1, 4)) * SUPERSAMPLE)
    return _flatten(base, layer)


def _texture(rng, size: int) -> np.ndarray:
    """Multiplicative texture in about [0.4, 1.25]: stripes, checks or blotches, maybe shaded (H×W×1)."""
    yy, xx = _grid(size)
    kind = int(rng.integers(0, 4))
    if kind == 0:
        ang, per = rng.uniform(0, np.pi), rng.uniform(5, 14) / size
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (math.cos(ang) * xx + math.sin(ang) * yy) / per)
    elif kind == 1:
        per = rng.uniform(6, 14) / size
        t = ((np.floor(xx / per) + np.floor(yy / per)) % 2).astype(np.float32)
    elif kind == 2:
        t = _lowfreq(rng, size, int(rng.integers(6, 14))) + 0.5
    else:
        t = np.full((size, size), 0.5, np.float32)
    tex = 0.55 + 0.7 * t
    if rng.uniform() < 0.5:  # a soft shading gradient across the object
        ang = rng.uniform(0, 2 * np.pi)
        tex = tex * (0.75 + 0.5 * (math.cos(ang) * xx + math.sin(ang) * yy) / 1.5)
    return tex[..., None].astype(np.float32)


def draw_photo_object(base: Image.Image, parts: list[dict], a, b, rng) -> Image.Image:
    """Composite one glyph (filled, coloured, textured parts) onto an RGBA image.

    ``a``, ``b`` map glyph units to pixels of the supersampled canvas.
    """
    layer, draw = _layer(base.size[0])
    col0 = _hsv(rng)
    thick = int(rng.integers(3, 6)) * SUPERSAMPLE
    for q in parts:
        col = _rgba(np.clip(col0 + rng.normal(0, 35, 3), 0, 255))
        xy = to_pixels(q["points"], a, b)
        if q["closed"]:
            draw.polygon(xy, fill=col)
        else:
            draw.line(xy, fill=col, width=thick, joint="curve")
    return _flatten(base, layer, _texture(rng, base.size[0]))


def occlude(base: Image.Image, rng, n: int) -> Image.Image:
    if n == 0:
        return base
    layer, draw = _layer(base.size[0])
    big = layer.size[0]
    for _ in range(n):
        w, h = rng.uniform(0.08, 0.24, 2) * big
        cx, cy = rng.uniform(0.25, 0.75, 2) * big
        col = _rgba(_hsv(rng, (0.0, 1.0), (0.1, 1.0)))
        box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        (draw.rectangle if rng.uniform() < 0.5 else draw.ellipse)(box, fill=col)
    return _flatten(base, layer)


def finish_photo(img: Image.Image, rng) -> Image.Image:
    img = img.convert("RGB")
    if rng.uniform() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 0.8))))
    size = img.size[0]
    noise = rng.normal(0, rng.uniform(2, 10), (size, size, 3)).astype(np.float32)
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8), "RGB")


def render_photo(parts: list[dict], rng, image_size: int) -> Image.Image:
    img = background(rng, image_size)
    a, b = random_transform(rng, image_size * SUPERSAMPLE, rot=30, scale=(0.65, 0.95), shift=0.1)
    img = draw_photo_object(img, parts, a, b, rng)
    img = occlude(img, rng, int(rng.choice([0, 0, 1, 2])))
    return finish_photo(img, rng)


def render_sketch(parts: list[dict], rng, image_size: int) -> Image.Image:
    size = image_size * SUPERSAMPLE
    img = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(img)
    a, b = random_transform(rng, size, rot=20, scale=(0.6, 0.9), shift=0.08)
    width = int(rng.integers(1, 4)) * SUPERSAMPLE
    ink = int(rng.integers(0, 70))
    keep = np.ones(len(parts), bool)
    if len(parts) > 2 and rng.uniform() < 0.3:  # forget one part
        keep[int(rng.integers(len(parts)))] = False
    for q, kept in zip(parts, keep):
        if not kept:
            continue
        pts = resample(q["points"], q["closed"], 32)
        pts = pts + smooth_noise(rng, len(pts), rng.uniform(0.015, 0.05))
        pts = pts + rng.normal(0, 0.006, pts.shape)
        if rng.uniform() < 0.35:  # cut the stroke short
            n = len(pts)
            cut = int(n * rng.uniform(0.15, 0.4))
            start = int(rng.integers(0, cut + 1))
            pts = pts[start : n - (cut - start)]
        w = max(SUPERSAMPLE, width + int(rng.integers(-1, 2)) * SUPERSAMPLE // 2)
        draw.line(to_pixels(pts, a, b), fill=ink, width=w)
    for _ in range(int(rng.choice([0, 0, 1, 1, 2]))):  # extra strokes
        start = rng.uniform(-0.9, 0.9, 2)
        pts = start + np.cumsum(rng.normal(0, 0.25, (int(rng.integers(2, 4)), 2)), axis=0)
        pts = resample(np.concatenate([start[None], pts]), False, 16) + smooth_noise(rng, 16, 0.02)
        draw.line(to_pixels(pts, a, b), fill=ink, width=max(SUPERSAMPLE, width - SUPERSAMPLE))
    return img.resize((image_size, image_size), Image.BOX)


def render_scene(specs: list[list[dict]], rng, image_size: int) -> Image.Image:
    big = image_size * SUPERSAMPLE
    img = background(rng, image_size, clutter=(1, 4))
    scale = (0.55, 0.8) if len(specs) == 1 else (0.4, 0.55)
    centres: list[np.ndarray] = []
    for parts in specs:
        for _ in range(20):  # keep the objects apart where possible
            c = rng.uniform(0.25, 0.75, 2) * big
            if all(np.linalg.norm(c - o) > 0.38 * big for o in centres):
                break
        centres.append(c)
        a, b = random_transform(rng, big, rot=30, scale=scale, shift=0.0, center=c)
        img = draw_photo_object(img, parts, a, b, rng)
    img = occlude(img, rng, int(rng.choice([0, 0, 1])))
    return finish_photo(img, rng)


def save_png(img: Image.Image, path: Path) -> None:
    # fixed parameters and no metadata chunks: the same pixels give the same bytes
    img.save(path, format="PNG", compress_level=6, optimize=False)
