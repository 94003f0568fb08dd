"""Glyph geometry: the primitives, a class's seeded composition of them, and point-set helpers."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

PRIMITIVES = ("ellipse", "polygon", "arc", "stroke", "star")
SUPERSAMPLE = 2  # draw at 2x and downsample: anti-aliased edges at no real cost


def class_name(c: int) -> str:
    return f"glyph_{c:03d}"


# --------------------------------------------------------------------------------------------------------
# class geometry


def primitive_outline(kind: str, p: dict, n: int = 48) -> tuple[np.ndarray, bool]:
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
        pts, closed = primitive_outline(kind, p)
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
# point-set helpers


def random_transform(rng, size: int, *, rot: float, scale: tuple[float, float], shift: float, center=None):
    """Glyph units → pixels: returns (A 2×2, b 2)."""
    theta = math.radians(rng.uniform(-rot, rot))
    s = rng.uniform(*scale) * size / 2
    aniso = rng.uniform(0.88, 1.12)
    a = _rot(theta) @ np.diag([s * aniso, s / aniso])
    if center is None:
        center = np.array([size / 2, size / 2]) + rng.uniform(-shift, shift, 2) * size
    return a, np.asarray(center, dtype=float)


def to_pixels(pts: np.ndarray, a: np.ndarray, b: np.ndarray) -> list[tuple[float, float]]:
    return [tuple(p) for p in (pts @ a.T + b).tolist()]


def resample(pts: np.ndarray, closed: bool, n: int) -> np.ndarray:
    if closed:
        pts = np.concatenate([pts, pts[:1]])
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.linspace(0, cum[-1], n)
    return np.stack([np.interp(t, cum, pts[:, 0]), np.interp(t, cum, pts[:, 1])], 1)


def smooth_noise(rng, n: int, amp: float) -> np.ndarray:
    """Low-frequency 2-D displacement along a polyline (sum of a few random sinusoids)."""
    t = np.linspace(0, 1, n)[:, None]
    out = np.zeros((n, 2))
    for f in (1, 2, 3):
        out += rng.normal(0, amp / f, (1, 2)) * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi, (1, 2)))
    return out
