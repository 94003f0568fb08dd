"""iReLU: turn non-negative float activations into small integer codes (docs/method.md §A, S400).

``iReLU(x) = clamp(round(x), 0, 2**bits - 1)`` **[decision: the patent's formula image is missing]**.

- Rounding is :func:`torch.round`, i.e. *round half to even* (banker's rounding): ``0.5 -> 0``,
  ``1.5 -> 2``, ``2.5 -> 2``, ``-0.5 -> -0 -> 0``. Exact halves are measure-zero for trained float
  activations, so this only matters for hand-written test values.
- Training uses a straight-through estimator (STE): the forward pass rounds and clamps, the backward pass
  passes the incoming gradient unchanged where ``0 <= x <= 2**bits - 1`` (both bounds inclusive) and
  zero elsewhere.
- ``bits`` is an ``int`` in ``1..8`` so every code fits in one ``uint8`` byte.
"""

from __future__ import annotations

import operator

import torch
from torch import nn

MIN_BITS = 1
MAX_BITS = 8


def check_bits(bits) -> int:
    """Return ``bits`` as an ``int`` if it is an integer in ``1..8``, else raise ``ValueError``."""
    try:
        if isinstance(bits, bool):
            raise TypeError
        value = operator.index(bits)
    except TypeError:
        raise ValueError(
            f"bits must be an int in {MIN_BITS}..{MAX_BITS} (codes are stored as uint8), got {bits!r}"
        ) from None
    if not MIN_BITS <= value <= MAX_BITS:
        raise ValueError(
            f"bits must be an int in {MIN_BITS}..{MAX_BITS} (codes are stored as uint8), got {bits!r}"
        )
    return value


def code_max(bits: int) -> int:
    """Largest code for ``bits`` bits: ``2**bits - 1``."""
    return (1 << check_bits(bits)) - 1


class _IReLUSTE(torch.autograd.Function):
    """Round + clamp forward; gradient passed through where ``0 <= x <= qmax``, zero elsewhere."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, qmax: int) -> torch.Tensor:
        ctx.save_for_backward((x >= 0) & (x <= qmax))
        return torch.clamp(torch.round(x), 0, qmax)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (mask,) = ctx.saved_tensors
        return grad_output * mask.to(grad_output.dtype), None


def irelu(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """``clamp(round(x), 0, 2**bits - 1)`` with a straight-through gradient (same dtype/shape as ``x``)."""
    qmax = code_max(bits)
    if not torch.is_floating_point(x):
        x = x.float()
    return _IReLUSTE.apply(x, qmax)


def to_codes(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """The integer codes of ``x`` as a ``uint8`` tensor (no gradient)."""
    with torch.no_grad():
        return irelu(x.detach(), bits).to(torch.uint8)


def quantization_loss(v: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """``L_q = mean_p ||v_p - iReLU(v_p)||^2`` with the code treated as a constant (detached).

    ``v`` has shape ``B×P×d`` (``P`` windows of ``d`` dims; any number of leading dims is accepted, the
    last dim is always ``d``). Exactly: squared differences are **summed over d**, then **averaged over
    every leading position** (windows ``p`` and batch ``b``), i.e.
    ``((v - irelu(v).detach())**2).sum(-1).mean()``. The result is a scalar; its gradient w.r.t. ``v``
    is ``2 (v - code) / (B·P)``, which pulls each activation towards its nearest integer code (and
    values above ``2**bits - 1`` down to the top code, negatives up to 0).
    """
    code = irelu(v, bits).detach()
    return (v - code).pow(2).sum(dim=-1).mean()


class IReLU(nn.Module):
    """Module form of :func:`irelu`."""

    def __init__(self, bits: int = 8):
        super().__init__()
        self.bits = check_bits(bits)

    @property
    def max_code(self) -> int:
        return code_max(self.bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return irelu(x, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"
