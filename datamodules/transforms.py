"""Image transforms for both datamodules, built from explicit size / mean / std.

Every image reaches these transforms as a 3-channel ``PIL.Image`` (see :func:`load_rgb`: sketches with
transparency are composited onto white first), so a network built for RGB photos takes sketches as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

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


def load_rgb(path: str) -> Image.Image:
    """Open an image file as RGB; transparent pixels (common in sketch PNGs) become white."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            canvas = Image.new("RGBA", im.size, (255, 255, 255, 255))
            canvas.alpha_composite(im)
            return canvas.convert("RGB")
        return im.convert("RGB")


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
) -> T.Compose:
    """Resize, then (if ``augment``) random horizontal flip and random affine, to tensor, normalise.

    ``fill`` paints the area the affine uncovers: 255 (white) suits sketches, 0 photos.
    A flip probability of 0, zero degrees, zero translation and scale (1, 1) switch the parts off.
    """
    interp = interpolation_mode(interpolation)
    steps: list[Any] = [T.Resize(_size(image_size), interpolation=interp, antialias=True)]
    if augment:
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
    import timm
    import timm.data

    cfg = None
    try:
        from timm.models import get_pretrained_cfg

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
