"""``data.augmentation=sake``: the published code's augmentation (SAKE / ClusterRetr ``random_transform``)."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from skimage.transform import AffineTransform, warp

from sketchquant.datamodules.transforms import SakeAugment, build_train_transform, sake_affine


def test_affine_matches_skimage_warp():
    rng = np.random.default_rng(0)
    img = (rng.random((48, 48, 3)) * 255).astype(np.uint8)
    sx, sy, rot, tx, ty = 1.2, 0.8, math.radians(20), 5.0, -3.0
    ref = warp(
        img, AffineTransform(scale=(sx, sy), rotation=rot, translation=(tx, ty)).inverse, preserve_range=True
    )
    a, b, c, d = sx * math.cos(rot), -sy * math.sin(rot), sx * math.sin(rot), sy * math.cos(rot)
    det = a * d - b * c
    out = np.asarray(sake_affine(Image.fromarray(img), (d / det, -b / det, -c / det, a / det), (tx, ty)))
    diff = np.abs(out.astype(float) - ref)
    # bilinear in both; only pixels at the edge of the warped area differ (fill handling)
    assert np.median(diff) <= 1.0 and diff.mean() < 2.0


def test_applied_with_probability_and_seeded():
    img = Image.fromarray((np.arange(32 * 32 * 3) % 251).astype(np.uint8).reshape(32, 32, 3))
    aug = SakeAugment()
    changed = 0
    for seed in range(200):
        torch.manual_seed(seed)
        changed += not np.array_equal(np.asarray(aug(img)), np.asarray(img))
    # p = 0.7 that it is applied, then 1 − 0.5⁴ that at least one of its four parts is
    assert 0.55 < changed / 200 < 0.8
    torch.manual_seed(3)
    first = np.asarray(aug(img))
    torch.manual_seed(3)
    assert np.array_equal(first, np.asarray(aug(img)))


def test_train_transform_sake_runs_before_resize():
    tf = build_train_transform(24, augmentation="sake")
    assert isinstance(tf.transforms[0], SakeAugment)
    torch.manual_seed(0)
    assert tf(Image.new("RGB", (40, 40), (255, 255, 255))).shape == (3, 24, 24)
