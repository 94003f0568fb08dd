"""Image transforms for both datamodules, built from explicit size / mean / std.

Every image reaches these transforms as a 3-channel ``PIL.Image`` (see :func:`load_rgb`: sketches with
transparency are composited onto white first), so a network built for RGB photos takes sketches as they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import timm
import timm.data
import torch
from PIL import Image
from timm.models import get_pretrained_cfg
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from .rgb import load_rgb, to_rgb  # noqa: F401  (re-exported: every image reaches the transforms as RGB)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INTERPOLATIONS = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "lanczos": InterpolationMode.LANCZOS,
    "box": InterpolationMode.BOX,
    "hamming": InterpolationMode.HAMMING,
}


def interpolation_mode(name: str) -> InterpolationMode:
    try:
        return _INTERPOLATIONS[str(name).lower()]
    except KeyError:
        raise ValueError(f"unknown interpolation {name!r}; choose one of {sorted(_INTERPOLATIONS)}") from None


def _size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return (image_size, image_size)
    h, w = image_size
    return (int(h), int(w))


def build_eval_transform(
    image_size: int | Sequence[int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    interpolation: str = "bilinear",
) -> T.Compose:
    """Resize to ``image_size`` (square if an int), to tensor, normalise."""
    return T.Compose(
        [
            T.Resize(_size(image_size), interpolation=interpolation_mode(interpolation), antialias=True),
            T.ToTensor(),
            T.Normalize(tuple(mean), tuple(std)),
        ]
    )


class SakeAugment:
    """SAKE's / ClusterRetr's ``random_transform``, applied with probability ``p`` (0.7) to the image at
    its stored size, before resizing: horizontal flip, per-axis scale ``U(0.7, 1.3)``, rotation ``±30°``
    and shifts of ``±10`` px, each with probability 0.5, as one affine map about the top-left corner
    (skimage's ``AffineTransform`` + ``warp``: bilinear, black fill — for sketches too).

    Random numbers come from torch's generator, so :class:`~datamodules.common.SampleDataset`'s seeded
    augmentation makes it reproducible."""

    def __init__(
        self,
        p: float = 0.7,
        scale: tuple[float, float] = (0.7, 1.3),
        degrees: float = 30.0,
        shift: float = 10.0,
    ) -> None:
        self.p, self.scale, self.degrees, self.shift = float(p), tuple(scale), float(degrees), float(shift)

    @staticmethod
    def _u(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand(()))

    def __call__(self, img: Image.Image) -> Image.Image:
        if float(torch.rand(())) >= self.p:
            return img
        if float(torch.rand(())) < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        sx = sy = 1.0
        if float(torch.rand(())) < 0.5:
            sx, sy = self._u(*self.scale), self._u(*self.scale)
        rot = math.radians(self._u(-self.degrees, self.degrees)) if float(torch.rand(())) < 0.5 else 0.0
        tx = ty = 0.0
        if float(torch.rand(())) < 0.5:
            tx, ty = self._u(-self.shift, self.shift), self._u(-self.shift, self.shift)
        # forward map (x, y) -> A·(x, y) + t with A = [[sx cos r, -sy sin r], [sx sin r, sy cos r]];
        # PIL wants the inverse: output pixel -> input pixel
        a, b = sx * math.cos(rot), -sy * math.sin(rot)
        c, d = sx * math.sin(rot), sy * math.cos(rot)
        det = a * d - b * c
        ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
        return sake_affine(img, (ia, ib, ic, id_), (tx, ty))


def sake_affine(img: Image.Image, inverse: tuple[float, float, float, float], shift: tuple[float, float]):
    """Warp ``img`` by the affine map whose linear part has inverse ``inverse`` (row-major 2×2) and whose
    translation is ``shift``, with skimage's pixel-centre convention (PIL's centres sit at +0.5)."""
    ia, ib, ic, id_ = inverse
    tx, ty = shift
    c0 = -(ia * tx + ib * ty) - 0.5 * (ia + ib) + 0.5
    f0 = -(ic * tx + id_ * ty) - 0.5 * (ic + id_) + 0.5
    coeffs = (ia, ib, c0, ic, id_, f0)
    return img.transform(img.size, Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR, fillcolor=0)


AUGMENTATIONS = ("affine", "sake")


def build_train_transform(
    image_size: int | Sequence[int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    interpolation: str = "bilinear",
    *,
    augment: bool = True,
    hflip: float = 0.5,
    affine_degrees: float = 10.0,
    affine_translate: float = 0.1,
    affine_scale: Sequence[float] = (0.9, 1.1),
    fill: int | Sequence[int] = 0,
    augmentation: str = "affine",
) -> T.Compose:
    """Resize, then (if ``augment``) random horizontal flip and random affine, to tensor, normalise.

    ``fill`` paints the area the affine uncovers: 255 (white) suits sketches, 0 photos.
    A flip probability of 0, zero degrees, zero translation and scale (1, 1) switch the parts off.
    ``augmentation="sake"`` replaces flip + affine by :class:`SakeAugment` (the published code's
    augmentation, before the resize; the ``hflip``/``affine_*`` settings and ``fill`` are then unused).
    """
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {augmentation!r}")
    interp = interpolation_mode(interpolation)
    steps: list[Any] = [T.Resize(_size(image_size), interpolation=interp, antialias=True)]
    if augment and augmentation == "sake":
        steps.insert(0, SakeAugment())
    elif augment:
        if hflip > 0:
            steps.append(T.RandomHorizontalFlip(p=float(hflip)))
        scale = tuple(float(s) for s in affine_scale) if affine_scale is not None else None
        if affine_degrees or affine_translate or (scale is not None and scale != (1.0, 1.0)):
            steps.append(
                T.RandomAffine(
                    degrees=float(affine_degrees),
                    translate=(float(affine_translate), float(affine_translate))
                    if affine_translate
                    else None,
                    scale=scale if scale != (1.0, 1.0) else None,
                    interpolation=InterpolationMode.BILINEAR,
                    fill=fill,
                )
            )
    steps += [T.ToTensor(), T.Normalize(tuple(mean), tuple(std))]
    return T.Compose(steps)


def resolve_data_config(backbone_name: str, image_size: int | None = None) -> dict[str, Any]:
    """Input size, mean, std and interpolation a timm backbone expects, without downloading anything.

    Reads the model's registered pretrained config; falls back to building the model with
    ``pretrained=False`` (cheap, no network) when the name has no registered config. ``image_size``
    overrides the size. Returns ``{"image_size", "mean", "std", "interpolation", "crop_pct"}``.
    """

    cfg = None
    try:
        pcfg = get_pretrained_cfg(backbone_name)
        if pcfg is not None:
            pcfg = pcfg.to_dict() if hasattr(pcfg, "to_dict") else dict(pcfg)
            cfg = timm.data.resolve_data_config(pretrained_cfg=pcfg)
    except Exception:  # unknown name or an older timm: build the model instead
        cfg = None
    if cfg is None:
        model = timm.create_model(backbone_name, pretrained=False)
        cfg = timm.data.resolve_model_data_config(model)
    size = int(image_size) if image_size is not None else int(cfg["input_size"][-1])
    return {
        "image_size": size,
        "mean": tuple(float(m) for m in cfg["mean"]),
        "std": tuple(float(s) for s in cfg["std"]),
        "interpolation": str(cfg.get("interpolation", "bilinear")),
        "crop_pct": float(cfg.get("crop_pct", 1.0)),
    }


def image_settings(data: dict[str, Any], backbone: str) -> dict[str, Any]:
    """The ``data`` section's keyword arguments with the image size, mean and std it leaves empty taken
    from ``backbone``'s timm data config, and list values as tuples."""
    kwargs = dict(data)
    if any(kwargs.get(key) is None for key in ("image_size", "mean", "std")):
        defaults = resolve_data_config(backbone)
        for key in ("image_size", "mean", "std"):
            if kwargs.get(key) is None:
                kwargs[key] = defaults[key]
    for key in ("mean", "std", "affine_scale"):
        if kwargs.get(key) is not None:
            kwargs[key] = tuple(kwargs[key])
    return kwargs
