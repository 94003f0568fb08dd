"""Emoji drawings that install offline, as a sketch/photo folder: a second real-drawing check of method B.

Sketches: the monochrome outline emoji of the Symbola font (Debian ``fonts-symbola``), drawn dark on white
with a varied stroke weight, scale, place, small rotation and a slight wobble. Photos: the colour emoji of
Noto Color Emoji (``fonts-noto-color-emoji``) at a varied scale, place and angle on a textured, cluttered
background (the glyph photos' backgrounds), blurred and noised a little. So the query domain is line
drawing and the gallery coloured pictures of the same objects.

Classes are category-level, each a Unicode emoji subgroup (or a part of one) of things an ImageNet
network knows: mammals, birds, fruit, road vehicles, musical instruments … A class's members are the
listed code points that both fonts' cmaps contain (read with fontTools); sketches and photos of a class
cycle through the same members. The unseen classes are fixed by a rule set before any training: every
fifth class of :data:`CLASSES` (in Unicode's order), starting with the third — birds, plants, drinks,
clocks, computers.

``sketchquant data make --kind emoji_drawings`` writes the folder layout of
:class:`sketchquant.datamodules.SketchPhotoDataModule` (``sketch/<class>/``, ``photo/<class>/``,
``unseen_classes.txt``, ``classes.txt``), byte-identical per seed on one machine (the images are only as
stable as the installed fonts and Pillow's rasteriser).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

from .glyphs.output import FolderSettings, make_folder_dataset
from .glyphs.render import background, finish_photo

INSTALL = "apt-get install fonts-symbola fonts-noto-color-emoji"

#: class → (the Unicode emoji subgroup(s) of its members, the members' code points), in Unicode's order
CLASSES: dict[str, tuple[str, str]] = {
    # 🐶🐱🐭🐹🐰🦊🐻🐼🐨🐯🦁🐮🐷🐵🐴🦄
    "mammal_faces": (
        "animal-mammal",
        "1F436 1F431 1F42D 1F439 1F430 1F98A 1F43B 1F43C 1F428 1F42F 1F981 1F42E 1F437 1F435 1F434 1F984",
    ),
    # 🐕🐈🐘🐎🐄🐖🐪🐫🦒🦓🦏🐁🐇🐿🐅🐆🐂🐐🐑🐏🦌🐒🦍🐃
    "mammals": (
        "animal-mammal",
        "1F415 1F408 1F418 1F40E 1F404 1F416 1F42A 1F42B 1F992 1F993 1F98F 1F401 "
        "1F407 1F43F 1F405 1F406 1F402 1F410 1F411 1F40F 1F98C 1F412 1F98D 1F403",
    ),
    # 🦃🐔🐓🐤🐥🐦🐧🕊🦅🦆🦉
    "birds": ("animal-bird", "1F983 1F414 1F413 1F424 1F425 1F426 1F427 1F54A 1F985 1F986 1F989"),
    # 🐊🐢🦎🐍🐉🦕🦖🐸
    "reptiles": ("animal-reptile, animal-amphibian", "1F40A 1F422 1F98E 1F40D 1F409 1F995 1F996 1F438"),
    # 🐳🐋🐬🐟🐠🐡🦈🐙🐚
    "marine_animals": ("animal-marine", "1F433 1F40B 1F42C 1F41F 1F420 1F421 1F988 1F419 1F41A"),
    # 🐌🦋🐛🐜🐝🐞🦗🕷🦂
    "bugs": ("animal-bug", "1F40C 1F98B 1F41B 1F41C 1F41D 1F41E 1F997 1F577 1F982"),
    # 💐🌸🌹🥀🌺🌻🌼🌷
    "flowers": ("plant-flower", "1F490 1F338 1F339 1F940 1F33A 1F33B 1F33C 1F337"),
    # 🌱🌲🌳🌴🌵🌾🌿🍀🍁🍂🍃
    "plants": ("plant-other", "1F331 1F332 1F333 1F334 1F335 1F33E 1F33F 1F340 1F341 1F342 1F343"),
    # 🍇🍈🍉🍊🍋🍌🍍🍎🍐🍑🍒🍓🥝🍅🥥
    "fruit": (
        "food-fruit",
        "1F347 1F348 1F349 1F34A 1F34B 1F34C 1F34D 1F34E 1F350 1F351 1F352 1F353 1F95D 1F345 1F965",
    ),
    # 🥑🍆🥔🥕🌽🌶🥒🥦🍄🥜🌰
    "vegetables": ("food-vegetable", "1F951 1F346 1F954 1F955 1F33D 1F336 1F952 1F966 1F344 1F95C 1F330"),
    # 🍞🥐🥖🥨🥞🧀🍖🍗🥓🍔🍟🍕🌭🌮🌯🥚🍳🥗🍿
    "prepared_food": (
        "food-prepared",
        "1F35E 1F950 1F956 1F968 1F95E 1F9C0 1F356 1F357 1F953 "
        "1F354 1F35F 1F355 1F32D 1F32E 1F32F 1F95A 1F373 1F957 1F37F",
    ),
    # 🍦🍧🍨🍩🍪🎂🍰🍫🍬🍭🍮🍯
    "sweets": ("food-sweet", "1F366 1F367 1F368 1F369 1F36A 1F382 1F370 1F36B 1F36C 1F36D 1F36E 1F36F"),
    # 🍼🥛☕🍵🍶🍾🍷🍸🍹🍺🥂🥃
    "drinks": ("drink", "1F37C 1F95B 2615 1F375 1F376 1F37E 1F377 1F378 1F379 1F37A 1F942 1F943"),
    # 🏠🏡🏢🏣🏥🏦🏨🏪🏫🏭🏯🏰🏛
    "buildings": (
        "place-building",
        "1F3E0 1F3E1 1F3E2 1F3E3 1F3E5 1F3E6 1F3E8 1F3EA 1F3EB 1F3ED 1F3EF 1F3F0 1F3DB",
    ),
    # 🚌🚑🚒🚓🚕🚗🚙🚚🚛🚜🏎
    "road_vehicles": (
        "transport-ground",
        "1F68C 1F691 1F692 1F693 1F695 1F697 1F699 1F69A 1F69B 1F69C 1F3CE",
    ),
    # ⛵🛶🚤🛳⛴🛥🚢
    "boats": ("transport-water", "26F5 1F6F6 1F6A4 1F6F3 26F4 1F6E5 1F6A2"),
    # ✈🛩🛫🛬🚁🚀🛸
    "aircraft": ("transport-air", "2708 1F6E9 1F6EB 1F6EC 1F681 1F680 1F6F8"),
    # ⌛⏳⌚⏰⏱⏲🕰
    "clocks": ("time", "231B 23F3 231A 23F0 23F1 23F2 1F570"),
    # ⚽⚾🏀🏐🏈🏉🎾🎳
    "sport_balls": ("sport", "26BD 26BE 1F3C0 1F3D0 1F3C8 1F3C9 1F3BE 1F3B3"),
    # 👔👕👖👗👘👙👚
    "clothes": ("clothing", "1F454 1F455 1F456 1F457 1F458 1F459 1F45A"),
    # 👞👟👠👡👢
    "shoes": ("clothing", "1F45E 1F45F 1F460 1F461 1F462"),
    # 🎷🎸🎹🎺🎻🥁
    "musical_instruments": ("musical-instrument", "1F3B7 1F3B8 1F3B9 1F3BA 1F3BB 1F941"),
    # 💻🖥🖨⌨🖱🖲
    "computers": ("computer", "1F4BB 1F5A5 1F5A8 2328 1F5B1 1F5B2"),
    # 🔨⛏⚒🛠🔧🔩⚙🗜
    "tools": ("tool", "1F528 26CF 2692 1F6E0 1F527 1F529 2699 1F5DC"),
}
#: the held-out classes: every fifth class from the third (a fixed rule, not a choice tuned on results)
UNSEEN = list(CLASSES)[2::5]
MIN_MEMBERS = 4  # distinct emoji a class needs in both fonts

#: font file names (the first found in the font folders is used) and the Debian package of each
_FONTS = {
    "sketch": (("Symbola_hint.ttf", "Symbola.ttf", "Symbola.otf"), "fonts-symbola"),
    "photo": (("NotoColorEmoji.ttf",), "fonts-noto-color-emoji"),
}
_FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts")
_NOTO_SIZE = 109  # the one size of Noto Color Emoji's bitmaps (a CBDT font: Pillow renders it at no other)
_PHOTO, _SKETCH = 0, 1


@lru_cache(maxsize=1)
def font_paths() -> dict[str, Path]:
    """``{"sketch": Symbola, "photo": Noto Color Emoji}`` font files; ``FileNotFoundError`` naming the Debian
    packages to install when one is missing."""
    found, missing = {}, []
    for domain, (names, package) in _FONTS.items():
        for folder in _FONT_DIRS:
            hits = sorted(p for name in names for p in Path(folder).expanduser().rglob(name))
            if hits:
                found[domain] = hits[0]
                break
        else:
            missing.append(package)
    if missing:
        raise FileNotFoundError(
            f"emoji_drawings: font package {' and '.join(missing)} not installed; run {INSTALL}"
        )
    return found


@lru_cache(maxsize=1)
def members() -> dict[str, list[int]]:
    """Each class's code points that both fonts contain; ``ValueError`` if a class keeps fewer than
    :data:`MIN_MEMBERS` (with Debian 12's fonts every class keeps all it lists)."""

    cmaps = [set(TTFont(p, lazy=True).getBestCmap()) for p in font_paths().values()]
    found = {
        name: [cp for cp in (int(h, 16) for h in hexes.split()) if all(cp in m for m in cmaps)]
        for name, (_, hexes) in CLASSES.items()
    }
    short = [f"{name} ({len(cps)})" for name, cps in found.items() if len(cps) < MIN_MEMBERS]
    if short:
        raise ValueError(
            f"emoji_drawings: fewer than {MIN_MEMBERS} emoji in both fonts for {', '.join(short)}"
        )
    return found


@lru_cache(maxsize=2)
def _font(domain: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_paths()[domain]), size)


@lru_cache(maxsize=512)
def _outline(cp: int, size: int) -> Image.Image:
    """Symbola's glyph at font size ``size`` as ink (255) on 0, cropped to the ink."""
    img = Image.new("L", (2 * size, 2 * size), 0)
    ImageDraw.Draw(img).text((size, size), chr(cp), font=_font("sketch", size), fill=255, anchor="mm")
    return img.crop(img.getbbox())


@lru_cache(maxsize=512)
def _colour(cp: int) -> Image.Image:
    """Noto's colour glyph (RGBA, transparent around it), cropped to it."""
    img = Image.new("RGBA", (2 * _NOTO_SIZE, 2 * _NOTO_SIZE), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    draw.text(
        (_NOTO_SIZE, _NOTO_SIZE), chr(cp), font=_font("photo", _NOTO_SIZE), embedded_color=True, anchor="mm"
    )
    return img.crop(img.getbbox())


def _warp(glyph: Image.Image, rng, size: int, scale: tuple[float, float], rot: float, shift: float):
    """``glyph`` on a transparent ``size`` px canvas in one resampling: its longer side a ``scale`` share of
    ``size`` (aspect ±10 %), turned up to ``rot`` degrees, its centre up to ``shift`` × ``size`` off the
    canvas centre, and bent a little (the canvas corners' sources move by about 2 % of the glyph)."""
    s = rng.uniform(*scale) * size / max(glyph.size)
    aspect = rng.uniform(0.9, 1.1)
    theta = np.deg2rad(rng.uniform(-rot, rot))
    centre = size / 2 + rng.uniform(-shift, shift, 2) * size
    rotate = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    to_glyph = np.diag([1 / (s * aspect), aspect / s]) @ rotate.T  # canvas offsets -> glyph offsets
    corners = np.array([[0, 0], [0, size], [size, size], [size, 0]], float)  # UL, LL, LR, UR
    src = (corners - centre) @ to_glyph.T + np.array(glyph.size) / 2
    src += rng.normal(0, 0.02 * max(glyph.size), src.shape)
    fill = 0 if glyph.mode == "L" else (0, 0, 0, 0)
    quad = tuple(float(v) for v in src.ravel())
    return glyph.transform((size, size), Image.QUAD, quad, Image.BILINEAR, fillcolor=fill)


def draw_sketch(cp: int, rng: np.random.Generator, size: int) -> Image.Image:
    """Symbola's outline of ``cp``: dark strokes of a varied weight on white (greyscale, ``size`` px)."""
    big = 2 * size  # drawn at twice the size, then averaged down: smooth strokes
    ink = _warp(_outline(cp, big), rng, big, scale=(0.55, 0.85), rot=12, shift=0.07)
    # stroke weight: blur the ink, then cut it at a level (low: thicker strokes, high: thinner ones), the
    # level a share of the blurred ink's peak so that a glyph of hairlines keeps them
    ink = ink.filter(ImageFilter.GaussianBlur(1.2))
    level = rng.uniform(0.12, 0.55) * max(ink.getextrema()[1], 1)
    ink = ink.point([int(255 * min(max((v - level) / 40 + 0.5, 0.0), 1.0)) for v in range(256)])
    dark = float(rng.uniform(0, 70))
    paper = 255 - np.asarray(ink, np.float32) * ((255 - dark) / 255)
    return Image.fromarray(paper.round().astype(np.uint8), "L").resize((size, size), Image.BOX)


def draw_photo(cp: int, rng: np.random.Generator, size: int) -> Image.Image:
    """Noto's colour emoji of ``cp`` on a textured, cluttered background (RGB, ``size`` px)."""
    base = background(rng, size)
    glyph = _warp(_colour(cp), rng, size, scale=(0.5, 0.8), rot=15, shift=0.08)
    rgb = ImageEnhance.Brightness(glyph.convert("RGB")).enhance(rng.uniform(0.8, 1.15))
    base.alpha_composite(Image.merge("RGBA", (*rgb.split(), glyph.getchannel("A"))))
    return finish_photo(base, rng)


def _setup(seed: int, image_size: int, c: int, domain: str):
    cps = members()[list(CLASSES)[c]]
    key, draw = (_SKETCH, draw_sketch) if domain == "sketch" else (_PHOTO, draw_photo)
    return lambda i: draw(cps[i % len(cps)], np.random.default_rng([seed, c, key, i]), image_size)


@dataclass(frozen=True)
class EmojiDrawingSettings(FolderSettings):
    """:func:`make_emoji_drawings`' settings."""

    image_size: int = 128
    photos_per_class: int = 30


def make_emoji_drawings(out_dir: str | os.PathLike, **settings: Any) -> Path:
    """Write the emoji drawings: ``sketches_per_class`` Symbola sketches and ``photos_per_class`` Noto
    colour photos of each class of :data:`CLASSES` (image ``i`` of a class shows its member ``i mod n``);
    ``settings``: the fields of :class:`EmojiDrawingSettings`."""
    s = EmojiDrawingSettings.of(settings)
    if s.sketches_per_class < 1 or s.photos_per_class < 1:
        raise ValueError("sketches_per_class and photos_per_class must be >= 1")
    if s.image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {s.image_size}")
    per_class = {"sketch": s.sketches_per_class, "photo": s.photos_per_class}

    def manifest() -> dict:  # read at build time only: a finished folder is reused without the fonts
        fonts = font_paths()
        return {
            "unseen": UNSEEN,
            "members": {name: "".join(map(chr, cps)) for name, cps in members().items()},
            "subgroups": {name: sub for name, (sub, _) in CLASSES.items()},
            "source": f"sketches: Symbola ({fonts['sketch']}); photos: Noto Color Emoji ({fonts['photo']})",
        }

    return make_folder_dataset(
        out_dir,
        "emoji_drawings",
        s,
        classes=list(CLASSES),
        unseen=UNSEEN,
        setup=partial(_setup, s.seed, s.image_size),
        ids=lambda c, domain: range(per_class[domain]),
        class_list=True,
        manifest=manifest,
    )
