"""Window pooling over a backbone feature map (docs/method.md §A, S200).

``WindowPooling`` maps a feature map ``B×C×H×W`` to per-window mean vectors ``B×C×P``:

- ``sliding`` (the method): windows of ``kernel=(kh, kw)`` cells moved by ``stride=(sh, sw)``; windows
  may overlap. One ``F.avg_pool2d(kernel, stride)`` computes every window mean at once. There are
  ``nH = (H - kh) // sh + 1`` rows and ``nW = (W - kw) // sw + 1`` columns of windows, ``P = nH·nW``,
  ordered row-major (``p = i·nW + j``). No padding: when ``(H - kh)`` is not a multiple of ``sh``, the
  last ``(H - kh) % sh`` rows are covered by no window (same for columns), exactly as ``avg_pool2d``
  without ``ceil_mode``.
- ``stripes`` (PCB baseline): ``P = num_stripes`` horizontal stripes spanning the full width, computed
  with ``F.adaptive_avg_pool2d(x, (P, 1))``. When ``H % P == 0`` the stripes are uniform and do not
  overlap (``H // P`` rows each). **[decision]** When ``H`` is not divisible by ``P``, adaptive pooling's
  boundaries are used: stripe ``i`` covers rows ``floor(i·H/P)`` to ``ceil((i+1)·H/P)`` (exclusive), so
  neighbouring stripes can share one row. ``num_stripes > H`` is an error.
- ``global``: one window, the whole map (``P = 1``), i.e. global average pooling.

Geometry helpers: :meth:`WindowPooling.num_windows` and :meth:`WindowPooling.window_boxes` give the
windows in feature-map cells as ``(top, left, bottom, right)`` with ``bottom``/``right`` exclusive
(Python slice convention: window ``p`` averages ``F[:, :, top:bottom, left:right]``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("global", "stripes", "sliding")


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        pair = (value, value)
    else:
        try:
            pair = tuple(int(v) for v in value)
        except TypeError:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}") from None
        if len(pair) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < 1:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return pair


class WindowPooling(nn.Module):
    """Average-pool a feature map ``B×C×H×W`` into ``P`` window means ``B×C×P`` (see module docstring).

    Args:
        mode: ``"sliding"`` (default), ``"stripes"`` or ``"global"``.
        kernel: window size in feature-map cells, int or ``(kh, kw)`` (``sliding`` only).
        stride: window step in cells, int or ``(sh, sw)`` (``sliding`` only).
        num_stripes: number of horizontal stripes (``stripes`` only).
    """

    def __init__(self, mode: str = "sliding", kernel=(2, 2), stride=(1, 1), num_stripes: int = 4):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"window mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.kernel = _pair(kernel, "kernel")
        self.stride = _pair(stride, "stride")
        if isinstance(num_stripes, bool) or not isinstance(num_stripes, int) or num_stripes < 1:
            raise ValueError(f"num_stripes must be a positive int, got {num_stripes!r}")
        self.num_stripes = num_stripes

    # ----------------------------------------------------------------------------------------- geometry
    def validate(self, feature_hw) -> tuple[int, int]:
        """Check that the windows fit a feature map of size ``(H, W)``; return ``(H, W)``."""
        h, w = (int(v) for v in feature_hw)
        if self.mode == "sliding":
            kh, kw = self.kernel
            if kh > h or kw > w:
                raise ValueError(
                    f"window kernel {self.kernel} is larger than the feature map {(h, w)} (H, W); "
                    f"use a smaller kernel, a larger image_size or an earlier feature stage"
                )
        elif self.mode == "stripes" and self.num_stripes > h:
            raise ValueError(
                f"num_stripes={self.num_stripes} is larger than the feature-map height {h} "
                f"(feature map {(h, w)})"
            )
        return h, w

    def grid(self, feature_hw) -> tuple[int, int]:
        """Windows per column and per row ``(nH, nW)`` for a feature map of size ``(H, W)``."""
        h, w = self.validate(feature_hw)
        if self.mode == "sliding":
            (kh, kw), (sh, sw) = self.kernel, self.stride
            return (h - kh) // sh + 1, (w - kw) // sw + 1
        if self.mode == "stripes":
            return self.num_stripes, 1
        return 1, 1

    def num_windows(self, feature_hw) -> int:
        """``P`` for a feature map of size ``(H, W)``."""
        n_h, n_w = self.grid(feature_hw)
        return n_h * n_w

    def window_boxes(self, feature_hw) -> list[tuple[int, int, int, int]]:
        """``(top, left, bottom, right)`` of every window in feature-map cells (bottom/right exclusive),
        in the same order as the ``P`` axis of :meth:`forward`."""
        h, w = self.validate(feature_hw)
        if self.mode == "sliding":
            (kh, kw), (sh, sw) = self.kernel, self.stride
            n_h, n_w = self.grid((h, w))
            return [(i * sh, j * sw, i * sh + kh, j * sw + kw) for i in range(n_h) for j in range(n_w)]
        if self.mode == "stripes":
            p = self.num_stripes
            # adaptive_avg_pool2d boundaries: start = floor(i*H/P), end = ceil((i+1)*H/P)
            return [(i * h // p, 0, -((-(i + 1) * h) // p), w) for i in range(p)]
        return [(0, 0, h, w)]

    # ----------------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"WindowPooling expects a B×C×H×W feature map, got shape {tuple(x.shape)}")
        self.validate(x.shape[-2:])
        if self.mode == "sliding":
            pooled = F.avg_pool2d(x, kernel_size=self.kernel, stride=self.stride)
        elif self.mode == "stripes":
            pooled = F.adaptive_avg_pool2d(x, (self.num_stripes, 1))
        else:
            pooled = F.adaptive_avg_pool2d(x, 1)
        return pooled.flatten(2)  # B×C×P, row-major over the window grid

    def extra_repr(self) -> str:
        if self.mode == "sliding":
            return f"mode=sliding, kernel={self.kernel}, stride={self.stride}"
        if self.mode == "stripes":
            return f"mode=stripes, num_stripes={self.num_stripes}"
        return "mode=global"


class PerWindowLinear(nn.Module):
    """``P`` independent ``Linear(in_features, out_features)`` layers, one per window, as ONE grouped
    1×1 convolution ``nn.Conv1d(P·C, P·d, 1, groups=P)``, optionally followed by ReLU.

    Input ``B×P×C`` → output ``B×P×d``; window ``p`` only sees its own ``C`` inputs and uses its own
    weights ``weight[p·d:(p+1)·d, :, 0]`` and bias ``bias[p·d:(p+1)·d]``. Each window's weights are
    initialised like an ``nn.Linear(C, d)`` (the conv's default init uses the same fan-in ``C``).
    """

    def __init__(
        self, num_windows: int, in_features: int, out_features: int, relu: bool = True, bias: bool = True
    ):
        super().__init__()
        for name, value in (
            ("num_windows", num_windows),
            ("in_features", in_features),
            ("out_features", out_features),
        ):
            if int(value) < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.num_windows = int(num_windows)
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.relu = relu
        self.conv = nn.Conv1d(
            self.num_windows * self.in_features,
            self.num_windows * self.out_features,
            kernel_size=1,
            groups=self.num_windows,
            bias=bias,
        )

    @classmethod
    def from_linears(cls, linears: Sequence[nn.Linear], relu: bool = True) -> PerWindowLinear:
        """Build from ``P`` separate ``nn.Linear`` layers (weights copied); equal to applying them one by one."""
        linears = list(linears)
        if not linears:
            raise ValueError("from_linears needs at least one nn.Linear")
        first = linears[0]
        if any(
            lin.in_features != first.in_features or lin.out_features != first.out_features for lin in linears
        ):
            raise ValueError("all linears must have the same in_features and out_features")
        has_bias = first.bias is not None
        if any((lin.bias is not None) != has_bias for lin in linears):
            raise ValueError("either all linears have a bias or none has")
        module = cls(len(linears), first.in_features, first.out_features, relu=relu, bias=has_bias)
        module.to(device=first.weight.device, dtype=first.weight.dtype)
        with torch.no_grad():
            module.conv.weight.copy_(torch.cat([lin.weight for lin in linears], 0).unsqueeze(-1))
            if has_bias:
                module.conv.bias.copy_(torch.cat([lin.bias for lin in linears], 0))
        return module

    def window_linear(self, p: int) -> nn.Linear:
        """Window ``p``'s layer as a standalone ``nn.Linear`` (a copy)."""
        d = self.out_features
        lin = nn.Linear(self.in_features, d, bias=self.conv.bias is not None)
        lin.to(device=self.conv.weight.device, dtype=self.conv.weight.dtype)
        with torch.no_grad():
            lin.weight.copy_(self.conv.weight[p * d : (p + 1) * d, :, 0])
            if self.conv.bias is not None:
                lin.bias.copy_(self.conv.bias[p * d : (p + 1) * d])
        return lin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] != self.num_windows or x.shape[2] != self.in_features:
            raise ValueError(
                f"PerWindowLinear expects B×{self.num_windows}×{self.in_features}, got {tuple(x.shape)}"
            )
        b = x.shape[0]
        y = self.conv(x.reshape(b, self.num_windows * self.in_features, 1))
        y = y.reshape(b, self.num_windows, self.out_features)
        return F.relu(y) if self.relu else y

    def extra_repr(self) -> str:
        return (
            f"num_windows={self.num_windows}, in_features={self.in_features}, "
            f"out_features={self.out_features}, relu={self.relu}"
        )
