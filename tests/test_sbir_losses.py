"""SBIR losses (docs/method.md §B formulas (1)-(4))."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sketchquant.core.batch import PHOTO, SKETCH
from sketchquant.lightning_modules.components.sbir_losses import (
    classification_loss,
    distillation_loss,
    distribution_alignment_loss,
    sbir_loss,
)


def _soft_ce_by_hand(student, teacher, tau=1.0):
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        t_exp = [math.exp(tau * v) for v in t_row]
        p = [v / sum(t_exp) for v in t_exp]
        log_z = math.log(sum(math.exp(v) for v in s_row))
        total += -sum(pk * (sk - log_z) for pk, sk in zip(p, s_row))
    return total / len(student)


def test_classification_loss_is_mean_ce():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 2])
    by_hand = -(math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-1))) + math.log(1 / (2 + math.e))) / 2
    assert classification_loss(logits, labels).item() == pytest.approx(by_hand, rel=1e-6)


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_kd_equals_soft_cross_entropy_on_photos(tau):
    g = torch.Generator().manual_seed(0)
    student = torch.randn(5, 4, generator=g)
    teacher = torch.randn(5, 4, generator=g)
    domain = torch.tensor([PHOTO, SKETCH, PHOTO, SKETCH, PHOTO])
    photos = domain == PHOTO
    expected = _soft_ce_by_hand(student[photos], teacher[photos], tau)
    assert distillation_loss(student, teacher, domain, tau=tau).item() == pytest.approx(expected, rel=1e-5)
    # teacher given for the photo rows only gives the same value
    only = distillation_loss(student, teacher[photos], domain, tau=tau)
    assert only.item() == pytest.approx(expected, rel=1e-5)


def test_kd_ignores_sketch_rows():
    g = torch.Generator().manual_seed(1)
    student = torch.randn(4, 6, generator=g, requires_grad=True)
    teacher = torch.randn(4, 6, generator=g)
    domain = torch.tensor([SKETCH, PHOTO, SKETCH, PHOTO])
    base = distillation_loss(student, teacher, domain)
    student2 = student.detach().clone()
    teacher2 = teacher.clone()
    student2[domain == SKETCH] = 100.0 * torch.randn(2, 6, generator=g)
    teacher2[domain == SKETCH] = float("nan")
    assert torch.equal(distillation_loss(student2, teacher2, domain), base.detach())
    base.backward()
    assert torch.all(student.grad[domain == SKETCH] == 0)
    assert torch.any(student.grad[domain == PHOTO] != 0)


def test_kd_without_photos_is_zero_and_keeps_graph():
    student = torch.randn(3, 5, requires_grad=True)
    loss = distillation_loss(student, torch.randn(3, 5), torch.full((3,), SKETCH))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.all(student.grad == 0)
    empty_teacher = distillation_loss(student, torch.randn(0, 5), torch.full((3,), SKETCH))
    assert empty_teacher.item() == 0.0


def test_kd_rejects_bad_teacher_rows():
    with pytest.raises(ValueError, match="expected 4 .* or 2"):
        distillation_loss(torch.randn(4, 3), torch.randn(3, 3), torch.tensor([0, 1, 0, 1]))


def test_kd_teacher_is_not_trained():
    teacher = torch.randn(2, 3, requires_grad=True)
    distillation_loss(
        torch.randn(2, 3, requires_grad=True), teacher, torch.zeros(2, dtype=torch.long)
    ).backward()
    assert teacher.grad is None


def test_da_equals_formula_with_fixed_z():
    g = torch.Generator().manual_seed(2)
    f = torch.randn(3, 8, generator=g)
    z = torch.randn(3, 8, generator=g)
    p = F.softmax(z, -1)
    by_hand = (p * (p.log() - F.log_softmax(f, -1))).sum(-1).mean()  # (1/B) Σ KL(softmax z ‖ softmax f)
    assert distribution_alignment_loss(f, z=z).item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert distribution_alignment_loss(z, z=z).item() == pytest.approx(0.0, abs=1e-6)


def test_da_draws_fresh_z_reproducibly():
    f = torch.randn(4, 16)
    torch.manual_seed(123)
    a1, a2 = distribution_alignment_loss(f), distribution_alignment_loss(f)
    torch.manual_seed(123)
    b1, b2 = distribution_alignment_loss(f), distribution_alignment_loss(f)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, a2)  # a fresh z on every call
    torch.manual_seed(123)
    z = torch.randn(4, 16)
    assert torch.equal(a1, distribution_alignment_loss(f, z=z))
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(
        distribution_alignment_loss(f, generator=g1), distribution_alignment_loss(f, generator=g2)
    )


def test_total_loss_combines_terms():
    g = torch.Generator().manual_seed(3)
    f = torch.randn(4, 8, generator=g, requires_grad=True)
    logits, im_logits, teacher = (torch.randn(4, n, generator=g) for n in (3, 10, 10))
    labels = torch.tensor([0, 1, 2, 0])
    domain = torch.tensor([PHOTO, SKETCH, PHOTO, SKETCH])
    z = torch.randn(4, 8, generator=g)
    out = sbir_loss(f, logits, labels, domain, im_logits, teacher, lambda_kd=1.0, lambda_da=0.1, z=z)
    expected = (
        classification_loss(logits, labels)
        + distillation_loss(im_logits, teacher, domain)
        + 0.1 * distribution_alignment_loss(f, z=z)
    )
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(out) == {"loss", "cls", "kd", "da"}
    out["loss"].backward()
    assert f.grad is not None
    no_kd = sbir_loss(f, logits, labels, domain, lambda_kd=0.0, lambda_da=0.0)
    assert no_kd["loss"].item() == pytest.approx(out["cls"].item())
    with pytest.raises(ValueError, match="teacher_logits"):
        sbir_loss(f, logits, labels, domain, lambda_kd=1.0)
