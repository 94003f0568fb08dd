import pytest
import torch

from sketchquant.lightning_modules.components.irelu import (
    IReLU,
    check_bits,
    irelu,
    quantization_loss,
    to_codes,
)


def test_values_round_half_to_even_and_clamp():
    x = torch.tensor([-3.0, -0.6, -0.5, 0.0, 0.4, 0.5, 0.6, 1.5, 2.5, 3.49, 254.5, 255.0, 255.4, 300.0])
    expected = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 2.0, 3.0, 254.0, 255.0, 255.0, 255.0])
    out = irelu(x, bits=8)
    assert out.dtype == x.dtype
    assert torch.equal(out, expected)


def test_bits_one_and_lower_bits():
    x = torch.tensor([-1.0, 0.2, 0.5, 0.51, 1.0, 1.5, 7.0])
    assert torch.equal(irelu(x, bits=1), torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]))
    assert torch.equal(irelu(x, bits=2), torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 2.0, 3.0]))


@pytest.mark.parametrize("bad", [0, 9, -1, 2.5, "8", None, True])
def test_invalid_bits(bad):
    with pytest.raises(ValueError, match=r"1\.\.8") as info:
        irelu(torch.zeros(2), bits=bad)
    assert repr(bad) in str(info.value)
    with pytest.raises(ValueError):
        IReLU(bits=bad)


def test_check_bits_accepts_ints():
    assert check_bits(1) == 1 and check_bits(8) == 8


def test_gradient_mask_exact():
    x = torch.tensor([-2.0, -0.01, 0.0, 0.3, 7.7, 254.9, 255.0, 255.01, 400.0], requires_grad=True)
    y = irelu(x, bits=8)
    upstream = torch.arange(1.0, 10.0)
    y.backward(upstream)
    mask = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    assert torch.equal(x.grad, upstream * mask)


def test_gradient_mask_bits_one():
    x = torch.tensor([-0.5, 0.5, 1.0, 1.5], requires_grad=True)
    irelu(x, bits=1).sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 0.0]))


def test_to_codes_uint8_no_grad():
    x = torch.tensor([[-1.0, 3.6, 1000.0]], requires_grad=True)
    codes = to_codes(x, bits=8)
    assert codes.dtype == torch.uint8 and not codes.requires_grad
    assert codes.tolist() == [[0, 4, 255]]
    assert to_codes(x, bits=3).tolist() == [[0, 4, 7]]


def test_quantization_loss_by_hand():
    # B=2, P=2, d=2
    v = torch.tensor([[[0.2, 1.7], [3.0, -1.0]], [[300.0, 0.5], [2.25, 4.9]]], requires_grad=True)
    # codes:        [[[0, 2], [3, 0]], [[255, 0], [2, 5]]]
    per_window = torch.tensor([[0.04 + 0.09, 0.0 + 1.0], [45.0**2 + 0.25, 0.0625 + 0.01]])
    loss = quantization_loss(v, bits=8)
    assert loss.dim() == 0
    assert torch.allclose(loss, per_window.mean())
    loss.backward()
    codes = torch.tensor([[[0.0, 2.0], [3.0, 0.0]], [[255.0, 0.0], [2.0, 5.0]]])
    # the code is a constant: d/dv = 2 (v - code) / (B*P)
    assert torch.allclose(v.grad, 2 * (v.detach() - codes) / 4)


def test_module_wrapper():
    m = IReLU(bits=4)
    assert m.max_code == 15 and "bits=4" in repr(m)
    assert torch.equal(m(torch.tensor([20.0, 3.2])), torch.tensor([15.0, 3.0]))
