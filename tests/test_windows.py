import pytest
import torch

from sketchquant.lightning_modules.components.windows import WindowPooling


def _manual(x, boxes):
    return torch.stack([x[:, :, t:b, lf:r].mean(dim=(2, 3)) for t, lf, b, r in boxes], dim=-1)


def test_sliding_4x4_kernel2_stride1():
    pool = WindowPooling("sliding", kernel=2, stride=1)
    assert pool.num_windows((4, 4)) == 9
    boxes = pool.window_boxes((4, 4))
    assert boxes == [(i, j, i + 2, j + 2) for i in range(3) for j in range(3)]
    x = torch.randn(2, 5, 4, 4)
    out = pool(x)
    assert out.shape == (2, 5, 9)
    assert torch.allclose(out, _manual(x, boxes), atol=1e-6)


def test_sliding_stride2_and_pairs():
    pool = WindowPooling("sliding", kernel=(2, 2), stride=(2, 2))
    assert pool.num_windows((4, 4)) == 4
    assert pool.window_boxes((4, 4)) == [(0, 0, 2, 2), (0, 2, 2, 4), (2, 0, 4, 2), (2, 2, 4, 4)]
    rect = WindowPooling("sliding", kernel=(3, 2), stride=(1, 2))
    hw = (5, 6)
    assert rect.grid(hw) == (3, 3)
    boxes = rect.window_boxes(hw)
    assert boxes[0] == (0, 0, 3, 2) and boxes[1] == (0, 2, 3, 4) and boxes[-1] == (2, 4, 5, 6)
    x = torch.randn(1, 3, *hw)
    assert torch.allclose(rect(x), _manual(x, boxes), atol=1e-6)


def test_sliding_uncovered_remainder():
    pool = WindowPooling("sliding", kernel=2, stride=2)
    # 5x5 map: the last row/column is covered by no window (no padding, like avg_pool2d)
    assert pool.window_boxes((5, 5)) == [(0, 0, 2, 2), (0, 2, 2, 4), (2, 0, 4, 2), (2, 2, 4, 4)]
    assert pool(torch.randn(1, 1, 5, 5)).shape == (1, 1, 4)


def test_stripes_divisible_and_not():
    pool = WindowPooling("stripes", num_stripes=4)
    assert pool.num_windows((8, 3)) == 4
    boxes = pool.window_boxes((8, 3))
    assert boxes == [(0, 0, 2, 3), (2, 0, 4, 3), (4, 0, 6, 3), (6, 0, 8, 3)]
    x = torch.randn(2, 4, 8, 3)
    assert torch.allclose(pool(x), _manual(x, boxes), atol=1e-6)
    # 7 rows into 3 stripes: adaptive boundaries floor(i*H/P) .. ceil((i+1)*H/P)
    p3 = WindowPooling("stripes", num_stripes=3)
    boxes = p3.window_boxes((7, 2))
    assert boxes == [(0, 0, 3, 2), (2, 0, 5, 2), (4, 0, 7, 2)]
    x = torch.randn(1, 2, 7, 2)
    assert torch.allclose(p3(x), _manual(x, boxes), atol=1e-6)


def test_global():
    pool = WindowPooling("global")
    assert pool.num_windows((3, 5)) == 1
    assert pool.window_boxes((3, 5)) == [(0, 0, 3, 5)]
    x = torch.randn(2, 6, 3, 5)
    assert torch.allclose(pool(x)[..., 0], x.mean(dim=(2, 3)), atol=1e-6)


def test_window_too_large():
    pool = WindowPooling("sliding", kernel=(3, 2), stride=1)
    with pytest.raises(ValueError, match=r"kernel \(3, 2\).*feature map \(2, 2\)"):
        pool.num_windows((2, 2))
    with pytest.raises(ValueError, match="kernel"):
        pool(torch.randn(1, 1, 2, 4))
    with pytest.raises(ValueError, match="num_stripes"):
        WindowPooling("stripes", num_stripes=5).num_windows((4, 4))


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        WindowPooling("tiles")
    with pytest.raises(ValueError, match="kernel"):
        WindowPooling(kernel=(1, 2, 3))
    with pytest.raises(ValueError, match="stride"):
        WindowPooling(stride=0)
