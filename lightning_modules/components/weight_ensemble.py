"""Weight-space ensembling of the pretrained and the fine-tuned network (WiSE-FT, Wortsman et al., CVPR 2022,
"Robust fine-tuning of zero-shot models"; docs/method.md §B), pure torch.

``θ = (1 − α)·θ₀ + α·θ₁`` for every floating tensor the pretrained network ``θ₀`` has, ``θ₁`` the fine-tuned
one: ``α = 1`` is plain fine-tuning, ``α = 0`` the network before training. The published code
(``mlfoundations/wise-ft``, ``_merge``) interpolates every entry of the two state dicts and uses
``α = 0.5`` when no data of the target distribution is there to choose it. Integer buffers
(BatchNorm's ``num_batches_tracked``) and entries ``θ₀`` does not have (a new seen-class classifier) keep
their fine-tuned values.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

__all__ = ["check_weight_ensemble", "interpolate_state"]


def check_weight_ensemble(alpha: float) -> float:
    """``alpha`` as a float, or a one-line refusal naming ``model.weight_ensemble`` when it is outside [0, 1]."""
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"model.weight_ensemble must be in [0, 1], got {alpha} (the fine-tuned share)")
    return alpha


def interpolate_state(initial: Mapping[str, Tensor], tuned: Mapping[str, Tensor], alpha: float) -> dict:
    """``tuned`` with each floating entry that ``initial`` also has replaced by
    ``(1 − alpha)·initial + alpha·tuned`` (in the tuned tensor's dtype and device)."""
    alpha = check_weight_ensemble(alpha)
    missing = sorted(set(initial) - set(tuned))
    if missing:
        raise KeyError(f"the fine-tuned weights lack {len(missing)} pretrained entries, e.g. {missing[0]!r}")
    out = dict(tuned)
    for key, start in initial.items():
        end = tuned[key]
        if tuple(start.shape) != tuple(end.shape):
            raise ValueError(f"{key}: pretrained shape {tuple(start.shape)} != fine-tuned {tuple(end.shape)}")
        if end.is_floating_point():
            out[key] = (end.detach() * alpha + start.detach().to(end) * (1.0 - alpha)).to(end.dtype)
    return out
