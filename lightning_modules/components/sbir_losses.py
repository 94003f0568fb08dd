"""Losses of the zero-shot SBIR method (docs/method.md §B, S3), pure torch.

- :func:`classification_loss`, formula (1): softmax cross-entropy over the seen classes, all samples.
- :func:`distillation_loss`, formula (2): soft cross-entropy between the frozen ImageNet teacher's
  ``softmax(τ·t)`` and the student's ImageNet head, **photos only**.
- :func:`distribution_alignment_loss`, formulas (3)(4): ``KL(softmax(z) ‖ softmax(f))`` with a fresh
  ``z ~ N(0, I_d)`` per sample and call, all samples.
- :func:`sbir_loss`: ``L = L_cls + λ_kd·L_kd + λ_da·L_da`` with every term returned for logging.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sketchquant.core.batch import PHOTO

__all__ = [
    "classification_loss",
    "distillation_loss",
    "distribution_alignment_loss",
    "sbir_loss",
]


def classification_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Formula (1): ``−(1/N) Σ_i log softmax(W f_i + b)[y_i]`` over sketches and photos."""
    return F.cross_entropy(logits, labels)


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    domain: Tensor,
    tau: float = 1.0,
) -> Tensor:
    """Formula (2): ``−(1/N_photo) Σ_{i∈photos} Σ_k p_ik log softmax(s_i)_k``, ``p_i = softmax(τ·t_i)``.

    ``student_logits``: ``N×K`` ImageNet-head logits of the whole batch (sketches and photos).
    ``domain``: ``N`` domain ids; rows with ``domain == PHOTO`` (0) are distilled, sketch rows ignored.
    ``teacher_logits``: either ``N×K`` — one row per batch sample, sketch rows are ignored and may hold
    anything (e.g. zeros) — or ``N_photo×K`` — the teacher run on the photo rows only, in batch order
    (``teacher(images[domain == PHOTO])``). When every sample is a photo the two coincide.
    ``tau`` multiplies the teacher logits before the softmax (docs/method.md §B: ``softmax(τ·t)``, τ = 1 default).

    A batch without photos returns ``0`` as a zero tensor still attached to the student's graph (so
    ``backward`` works and DDP sees every parameter used). The teacher side is detached.
    """
    if student_logits.ndim != 2:
        raise ValueError(f"student_logits must be N×K, got shape {tuple(student_logits.shape)}")
    n = student_logits.shape[0]
    is_photo = domain.reshape(-1) == PHOTO
    if is_photo.numel() != n:
        raise ValueError(f"domain has {is_photo.numel()} entries for {n} student rows")
    n_photo = int(is_photo.sum())
    if teacher_logits.shape[-1] != student_logits.shape[-1]:
        raise ValueError(
            f"teacher has {teacher_logits.shape[-1]} classes, student head {student_logits.shape[-1]}"
        )
    if teacher_logits.shape[0] == n:
        teacher_photo = teacher_logits[is_photo]
    elif teacher_logits.shape[0] == n_photo:
        teacher_photo = teacher_logits
    else:
        raise ValueError(
            f"teacher_logits has {teacher_logits.shape[0]} rows: expected {n} (all samples) or "
            f"{n_photo} (photos only)"
        )
    if n_photo == 0:
        return student_logits.sum() * 0.0
    p = F.softmax(tau * teacher_photo.detach().to(student_logits.dtype), dim=-1)
    log_q = F.log_softmax(student_logits[is_photo], dim=-1)
    return -(p * log_q).sum(dim=-1).mean()


def distribution_alignment_loss(
    features: Tensor,
    z: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Formulas (3)(4): ``(1/B) Σ_i KL(softmax(z_i) ‖ softmax(f_i))``, softmax over the ``d`` channels.

    ``features``: ``B×d`` embeddings ``f`` (before any normalisation), all samples.
    ``z``: the Gaussian targets; when ``None`` a fresh ``z ~ N(0, I_d)`` of ``features``' shape is drawn
    on every call from ``generator`` (or, without one, the global torch RNG of ``features``' device —
    so ``torch.manual_seed`` makes a run reproducible). Computed as
    ``F.kl_div(F.log_softmax(f, -1), F.softmax(z, -1), reduction="batchmean")``.
    """
    if z is None:
        device = generator.device if generator is not None else features.device
        z = torch.randn(features.shape, generator=generator, device=device, dtype=features.dtype)
        z = z.to(features.device)
    elif z.shape != features.shape:
        raise ValueError(f"z has shape {tuple(z.shape)}, features {tuple(features.shape)}")
    return F.kl_div(F.log_softmax(features, dim=-1), F.softmax(z, dim=-1), reduction="batchmean")


def sbir_loss(
    features: Tensor,
    logits: Tensor,
    labels: Tensor,
    domain: Tensor,
    imagenet_logits: Tensor | None = None,
    teacher_logits: Tensor | None = None,
    *,
    lambda_kd: float = 1.0,
    lambda_da: float = 0.1,
    tau: float = 1.0,
    z: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Total loss ``L = L_cls + λ_kd·L_kd + λ_da·L_da`` (docs/method.md §B.3) and its terms.

    Returns ``{"loss", "cls", "kd", "da"}``. A term whose weight is 0 is not computed (reported as a
    detached zero); ``L_kd`` needs ``imagenet_logits`` and ``teacher_logits`` when ``lambda_kd != 0``.
    """
    zero = features.new_zeros(())
    cls = classification_loss(logits, labels)
    if lambda_kd:
        if imagenet_logits is None or teacher_logits is None:
            raise ValueError("lambda_kd != 0 needs imagenet_logits and teacher_logits")
        kd = distillation_loss(imagenet_logits, teacher_logits, domain, tau=tau)
    else:
        kd = zero
    da = distribution_alignment_loss(features, z=z, generator=generator) if lambda_da else zero
    total = cls + lambda_kd * kd + lambda_da * da
    return {"loss": total, "cls": cls.detach(), "kd": kd.detach(), "da": da.detach()}
