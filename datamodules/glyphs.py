"""The embedded benchmark: procedurally drawn "glyph" classes as photos and as sketches.

Every class is a seeded composition of 2-4 primitives (ellipse, polygon, arc, stroke, star) with its own
positions, scales and rotations, so the unseen classes are new compositions of familiar parts: the
zero-shot question in miniature. Two domains are drawn from the same class geometry:

- photo: filled, coloured, textured parts on a cluttered background (gradient, low-frequency noise,
  distractor shapes made of the same primitives), random affine, occluders, pixel noise;
- sketch: black wobbly outlines on white, parts dropped or cut short, extra strokes, varied line width.

The files land in the same layout the real readers read (``sketch/<class>/<i>.png``,
``photo/<class>/<i>.png``, ``unseen_classes.txt``), plus ``dataset.json``. Every image has its own RNG
seeded from ``(seed, class, domain, i)``, so the output is byte-identical for a seed and generation can be
split over processes. Output is written to ``<out>.tmp-XXXX`` and renamed into place when complete.

:func:`make_glyph_scenes` draws method A's multi-label variant: photo-style scenes of 1-3 glyphs.
Only PIL and numpy are used.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

GENERATOR_VERSION = 1
MANIFEST = "dataset.json"
PRIMITIVES = ("ellipse", "polygon", "arc", "stroke", "star")
SUPERSAMPLE = 2  # draw at 2x and downsample: anti-aliased edges at no real cost

_PHOTO, _SKETCH, _SCENE, _SPLIT = 0, 1, 2, 3


def class_name(c: int) -> str:
    return f"glyph_{c:03d}"


# --------------------------------------------------------------------------------------------------------
# class geometry


def _primitive_outline(kind: str, p: dict, n: int = 48) -> tuple[np.ndarray, bool]:
    """Unit-size outline of one primitive in its own frame; returns (points N×2, closed)."""
    if kind == "ellipse":
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], 1), True
    if kind == "polygon":
        k = p["sides"]
        t = p["phase"] + np.arange(k) * 2 * np.pi / k
        r = np.asarray(p["radii"])
        return np.stack([r * np.cos(t), r * np.sin(t)], 1), True
    if kind == "star":
        k = p["points"]
        t = p["phase"] + np.arange(2 * k) * np.pi / k
        r = np.where(np.arange(2 * k) % 2 == 0, 1.0, p["inner"])
        return np.stack([r * np.cos(t), r * np.sin(t)], 1), True
    if kind == "arc":
        t = np.linspace(p["start"], p["start"] + p["span"], max(8, int(n * p["span"] / (2 * np.pi))))
        return np.stack([np.cos(t), np.sin(t)], 1), False
    if kind == "stroke":
        return np.stack([np.linspace(-1, 1, len(p["ys"])), np.asarray(p["ys"])], 1), False
    raise ValueError(kind)


def _rot(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def class_spec(seed: int, c: int) -> list[dict]:
    """The geometry of class ``c``: a list of parts, each with its outline in glyph units (about [-1, 1])."""
    rng = np.random.default_rng([seed, c, 7919])
    n_parts = int(rng.integers(2, 5))
    kinds = rng.choice(len(PRIMITIVES), size=n_parts)
    if len(set(kinds.tolist())) == 1:  # at least two kinds of part
        kinds[-1] = (kinds[-1] + 1 + rng.integers(0, len(PRIMITIVES) - 1)) % len(PRIMITIVES)
    parts = []
    for k in kinds:
        kind = PRIMITIVES[int(k)]
        p: dict[str, Any] = {}
        if kind == "polygon":
            p["sides"] = int(rng.integers(3, 7))
            p["phase"] = float(rng.uniform(0, 2 * np.pi))
            p["radii"] = rng.uniform(0.7, 1.0, p["sides"]).tolist()
        elif kind == "star":
            p["points"] = int(rng.integers(4, 8))
            p["phase"] = float(rng.uniform(0, 2 * np.pi))
            p["inner"] = float(rng.uniform(0.35, 0.6))
        elif kind == "arc":
            p["start"] = float(rng.uniform(0, 2 * np.pi))
            p["span"] = float(rng.uniform(0.6 * np.pi, 1.5 * np.pi))
        elif kind == "stroke":
            p["ys"] = rng.uniform(-0.6, 0.6, int(rng.integers(2, 5))).tolist()
        pts, closed = _primitive_outline(kind, p)
        size = rng.uniform(0.25, 0.55)
        aspect = rng.uniform(0.45, 1.0)
        pts = pts * np.array([size, size * aspect])
        pts = pts @ _rot(float(rng.uniform(0, 2 * np.pi))).T + rng.uniform(-0.5, 0.5, 2)
        parts.append({"kind": kind, "points": pts, "closed": closed})
    allp = np.concatenate([q["points"] for q in parts])
    lo, hi = allp.min(0), allp.max(0)
    center, half = (lo + hi) / 2, max((hi - lo).max() / 2, 1e-6)
    for q in parts:
        q["points"] = (q["points"] - center) / half * 0.85
    return parts


# --------------------------------------------------------------------------------------------------------
# drawing helpers


def _random_transform(rng, size: int, *, rot: float, scale: tuple[float, float], shift: float, center=None):
    """Glyph units → pixels: returns (A 2×2, b 2)."""
    theta = math.radians(rng.uniform(-rot, rot))
    s = rng.uniform(*scale) * size / 2
    aniso = rng.uniform(0.88, 1.12)
    a = _rot(theta) @ np.diag([s * aniso, s / aniso])
    if center is None:
        center = np.array([size / 2, size / 2]) + rng.uniform(-shift, shift, 2) * size
    return a, np.asarray(center, dtype=float)


def _apply(pts: np.ndarray, a: np.ndarray, b: np.ndarray) -> list[tuple[float, float]]:
    return [tuple(p) for p in (pts @ a.T + b).tolist()]


def _resample(pts: np.ndarray, closed: bool, n: int) -> np.ndarray:
    if closed:
        pts = np.concatenate([pts, pts[:1]])
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.linspace(0, cum[-1], n)
    return np.stack([np.interp(t, cum, pts[:, 0]), np.interp(t, cum, pts[:, 1])], 1)


def _smooth_noise(rng, n: int, amp: float) -> np.ndarray:
    """Low-frequency 2-D displacement along a polyline (sum of a few random sinusoids)."""
    t = np.linspace(0, 1, n)[:, None]
    out = np.zeros((n, 2))
    for f in (1, 2, 3):
        out += rng.normal(0, amp / f, (1, 2)) * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi, (1, 2)))
    return out


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


def _background(rng, size: int, clutter: tuple[int, int] = (1, 5)) -> Image.Image:
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
        pts, closed = _primitive_outline(kind, p, n=24)
        a, b = _random_transform(rng, big, rot=180, scale=(0.08, 0.25), shift=0.5)
        xy = _apply(pts, a, b)
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


def _draw_photo_object(base: Image.Image, parts: list[dict], a, b, rng) -> Image.Image:
    """Composite one glyph (filled, coloured, textured parts) onto an RGBA image.

    ``a``, ``b`` map glyph units to pixels of the supersampled canvas.
    """
    layer, draw = _layer(base.size[0])
    col0 = _hsv(rng)
    thick = int(rng.integers(3, 6)) * SUPERSAMPLE
    for q in parts:
        col = _rgba(np.clip(col0 + rng.normal(0, 35, 3), 0, 255))
        xy = _apply(q["points"], a, b)
        if q["closed"]:
            draw.polygon(xy, fill=col)
        else:
            draw.line(xy, fill=col, width=thick, joint="curve")
    return _flatten(base, layer, _texture(rng, base.size[0]))


def _occlude(base: Image.Image, rng, n: int) -> Image.Image:
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


def _finish_photo(img: Image.Image, rng) -> Image.Image:
    img = img.convert("RGB")
    if rng.uniform() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 0.8))))
    size = img.size[0]
    noise = rng.normal(0, rng.uniform(2, 10), (size, size, 3)).astype(np.float32)
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8), "RGB")


def render_photo(parts: list[dict], rng, image_size: int) -> Image.Image:
    img = _background(rng, image_size)
    a, b = _random_transform(rng, image_size * SUPERSAMPLE, rot=30, scale=(0.65, 0.95), shift=0.1)
    img = _draw_photo_object(img, parts, a, b, rng)
    img = _occlude(img, rng, int(rng.choice([0, 0, 1, 2])))
    return _finish_photo(img, rng)


def render_sketch(parts: list[dict], rng, image_size: int) -> Image.Image:
    size = image_size * SUPERSAMPLE
    img = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(img)
    a, b = _random_transform(rng, size, rot=20, scale=(0.6, 0.9), shift=0.08)
    width = int(rng.integers(1, 4)) * SUPERSAMPLE
    ink = int(rng.integers(0, 70))
    keep = np.ones(len(parts), bool)
    if len(parts) > 2 and rng.uniform() < 0.3:  # forget one part
        keep[int(rng.integers(len(parts)))] = False
    for q, kept in zip(parts, keep):
        if not kept:
            continue
        pts = _resample(q["points"], q["closed"], 32)
        pts = pts + _smooth_noise(rng, len(pts), rng.uniform(0.015, 0.05))
        pts = pts + rng.normal(0, 0.006, pts.shape)
        if rng.uniform() < 0.35:  # cut the stroke short
            n = len(pts)
            cut = int(n * rng.uniform(0.15, 0.4))
            start = int(rng.integers(0, cut + 1))
            pts = pts[start : n - (cut - start)]
        w = max(SUPERSAMPLE, width + int(rng.integers(-1, 2)) * SUPERSAMPLE // 2)
        draw.line(_apply(pts, a, b), fill=ink, width=w)
    for _ in range(int(rng.choice([0, 0, 1, 1, 2]))):  # extra strokes
        start = rng.uniform(-0.9, 0.9, 2)
        pts = start + np.cumsum(rng.normal(0, 0.25, (int(rng.integers(2, 4)), 2)), axis=0)
        pts = _resample(np.concatenate([start[None], pts]), False, 16) + _smooth_noise(rng, 16, 0.02)
        draw.line(_apply(pts, a, b), fill=ink, width=max(SUPERSAMPLE, width - SUPERSAMPLE))
    return img.resize((image_size, image_size), Image.BOX)


def render_scene(specs: list[list[dict]], rng, image_size: int) -> Image.Image:
    big = image_size * SUPERSAMPLE
    img = _background(rng, image_size, clutter=(1, 4))
    scale = (0.55, 0.8) if len(specs) == 1 else (0.4, 0.55)
    centres: list[np.ndarray] = []
    for parts in specs:
        for _ in range(20):  # keep the objects apart where possible
            c = rng.uniform(0.25, 0.75, 2) * big
            if all(np.linalg.norm(c - o) > 0.38 * big for o in centres):
                break
        centres.append(c)
        a, b = _random_transform(rng, big, rot=30, scale=scale, shift=0.0, center=c)
        img = _draw_photo_object(img, parts, a, b, rng)
    img = _occlude(img, rng, int(rng.choice([0, 0, 1])))
    return _finish_photo(img, rng)


def _save_png(img: Image.Image, path: Path) -> None:
    # fixed parameters and no metadata chunks: the same pixels give the same bytes
    img.save(path, format="PNG", compress_level=6, optimize=False)


# --------------------------------------------------------------------------------------------------------
# atomic output


def _read_manifest(out: Path) -> dict | None:
    try:
        return json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _manifest_matches(man: dict | None, kind: str, params: dict) -> bool:
    return (
        man is not None
        and man.get("kind") == kind
        and man.get("version") == GENERATOR_VERSION
        and man.get("params") == json.loads(json.dumps(params))
    )


def _atomic_generate(out_dir, kind: str, params: dict, overwrite: bool, build) -> Path:
    out = Path(out_dir).expanduser().absolute()
    if out.exists():
        man = _read_manifest(out)
        if not overwrite:
            if _manifest_matches(man, kind, params):
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
            "version": GENERATOR_VERSION,
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
            if _manifest_matches(_read_manifest(out), kind, params):
                shutil.rmtree(tmp, ignore_errors=True)
                return out
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _run_tasks(fn, tasks: list, workers: int) -> list:
    if workers <= 1 or len(tasks) <= 1:
        return [fn(t) for t in tasks]
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(min(workers, len(tasks))) as pool:
        return pool.map(fn, tasks)


# --------------------------------------------------------------------------------------------------------
# sketch / photo benchmark


def _sp_task(args) -> int:
    root, seed, c, domain, count, image_size = args
    parts = class_spec(seed, c)
    folder = Path(root) / ("photo" if domain == _PHOTO else "sketch") / class_name(c)
    folder.mkdir(parents=True, exist_ok=True)
    render = render_photo if domain == _PHOTO else render_sketch
    for i in range(count):
        rng = np.random.default_rng([seed, c, domain, i])
        _save_png(render(parts, rng, image_size), folder / f"{i:04d}.png")
    return count


def unseen_class_ids(seed: int, num_classes: int, num_unseen: int) -> list[int]:
    if not 0 < num_unseen < num_classes:
        raise ValueError(f"num_unseen must be in 1..{num_classes - 1}, got {num_unseen}")
    rng = np.random.default_rng([seed, 424242])
    return sorted(int(i) for i in rng.choice(num_classes, num_unseen, replace=False))


def make_glyph_benchmark(
    out_dir: str | os.PathLike,
    *,
    num_classes: int = 60,
    num_unseen: int = 15,
    photos_per_class: int = 40,
    sketches_per_class: int = 40,
    image_size: int = 64,
    seed: int = 0,
    workers: int = 1,
    overwrite: bool = False,
) -> Path:
    """Write the sketch/photo glyph benchmark to ``out_dir`` (atomically) and return its path.

    An existing folder whose manifest matches these parameters is returned as it is; a different one
    raises ``FileExistsError`` unless ``overwrite``. ``workers`` > 1 renders classes in parallel processes
    and gives the same bytes.
    """
    if photos_per_class < 1 or sketches_per_class < 1:
        raise ValueError("photos_per_class and sketches_per_class must be >= 1")
    params = {
        "num_classes": int(num_classes),
        "num_unseen": int(num_unseen),
        "photos_per_class": int(photos_per_class),
        "sketches_per_class": int(sketches_per_class),
        "image_size": int(image_size),
        "seed": int(seed),
    }
    unseen = unseen_class_ids(seed, num_classes, num_unseen)

    def build(tmp: Path) -> dict:
        tasks = [
            (str(tmp), seed, c, d, n, image_size)
            for c in range(num_classes)
            for d, n in ((_SKETCH, sketches_per_class), (_PHOTO, photos_per_class))
        ]
        _run_tasks(_sp_task, tasks, workers)
        names = [class_name(c) for c in range(num_classes)]
        unseen_names = [class_name(c) for c in unseen]
        (tmp / "unseen_classes.txt").write_text("".join(n + "\n" for n in unseen_names))
        return {
            "layout": "folder",
            "classes": names,
            "unseen_classes": unseen_names,
            "counts": {
                "classes": num_classes,
                "seen": num_classes - num_unseen,
                "unseen": num_unseen,
                "sketches": num_classes * sketches_per_class,
                "photos": num_classes * photos_per_class,
            },
        }

    return _atomic_generate(out_dir, "sketch_photo", params, overwrite, build)


# --------------------------------------------------------------------------------------------------------
# multi-label scenes (method A)


def _scene_labels(seed: int, i: int, num_classes: int, lo: int, hi: int) -> list[int]:
    rng = np.random.default_rng([seed, _SPLIT, i])
    k = int(rng.integers(lo, hi + 1))
    return sorted(int(c) for c in rng.choice(num_classes, min(k, num_classes), replace=False))


def _scene_task(args) -> int:
    root, seed, start, stop, num_classes, lo, hi, image_size = args
    specs = [class_spec(seed, c) for c in range(num_classes)]
    for i in range(start, stop):
        labels = _scene_labels(seed, i, num_classes, lo, hi)
        rng = np.random.default_rng([seed, _SCENE, i])
        order = rng.permutation(len(labels))
        _save_png(
            render_scene([specs[labels[j]] for j in order], rng, image_size),
            Path(root) / "images" / f"{i:05d}.png",
        )
    return stop - start


def make_glyph_scenes(
    out_dir: str | os.PathLike,
    *,
    num_classes: int = 20,
    num_train: int = 1000,
    num_query: int = 200,
    num_database: int = 1000,
    min_objects: int = 1,
    max_objects: int = 3,
    image_size: int = 64,
    seed: int = 0,
    workers: int = 1,
    overwrite: bool = False,
) -> Path:
    """Write the multi-label glyph scenes (``images/``, ``{train,query,database}.csv``, ``classes.txt``).

    CSV lines are ``images/00000.png,glyph_003;glyph_011`` (path relative to the root, labels are class
    names). The three splits are disjoint images drawn the same way.
    """
    if not 1 <= min_objects <= max_objects:
        raise ValueError("need 1 <= min_objects <= max_objects")
    params = {
        "num_classes": int(num_classes),
        "num_train": int(num_train),
        "num_query": int(num_query),
        "num_database": int(num_database),
        "min_objects": int(min_objects),
        "max_objects": int(max_objects),
        "image_size": int(image_size),
        "seed": int(seed),
    }
    total = num_train + num_query + num_database

    def build(tmp: Path) -> dict:
        (tmp / "images").mkdir()
        chunk = max(1, math.ceil(total / max(1, workers) / 4))
        tasks = [
            (str(tmp), seed, s, min(s + chunk, total), num_classes, min_objects, max_objects, image_size)
            for s in range(0, total, chunk)
        ]
        _run_tasks(_scene_task, tasks, workers)
        names = [class_name(c) for c in range(num_classes)]
        (tmp / "classes.txt").write_text("".join(n + "\n" for n in names))
        bounds = {
            "train": (0, num_train),
            "query": (num_train, num_train + num_query),
            "database": (num_train + num_query, total),
        }
        for split, (a, b) in bounds.items():
            lines = [
                f"images/{i:05d}.png,"
                + ";".join(names[c] for c in _scene_labels(seed, i, num_classes, min_objects, max_objects))
                for i in range(a, b)
            ]
            (tmp / f"{split}.csv").write_text("".join(x + "\n" for x in lines))
        return {
            "layout": "csv",
            "classes": names,
            "counts": {
                "classes": num_classes,
                "train": num_train,
                "query": num_query,
                "database": num_database,
            },
        }

    return _atomic_generate(out_dir, "scenes", params, overwrite, build)


# --------------------------------------------------------------------------------------------------------
# contact sheet


def _list_images(folder: Path) -> list[Path]:
    exts = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in exts) if folder.is_dir() else []


def _thumb(path: Path, cell: int) -> Image.Image:
    from .transforms import load_rgb

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
        unseen = (
            [
                ln.strip()
                for ln in unseen_file.read_text().splitlines()
                if ln.strip() and not ln.startswith("#")
            ]
            if unseen_file.exists()
            else []
        )
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
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, format="PNG")
    return out


def read_class_list(path: str | os.PathLike) -> list[str]:
    """One class per line; blank lines and ``#`` comments ignored."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
