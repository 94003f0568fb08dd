"""The evaluation protocols by name (docs/method.md §C): each one's metric function, chance level and
label kind, so callers look a protocol up instead of branching on its name.

- ``sbir``: SAKE's ``eval_AP_inner`` / ``eval_precision`` (class labels; VOC or standard AP, class mean);
- ``hashing``: DeepHash-pytorch's ``CalcTopMap`` (multi-hot labels; relevant = shares a label).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .checks import check_choice
from .metrics import hashing_metrics, sbir_metrics

__all__ = ["Protocol", "PROTOCOLS", "get_protocol", "sbir_chance", "hashing_chance"]


def sbir_chance(
    q_labels: torch.Tensor, g_labels: torch.Tensor, map_at: Iterable, stage: str
) -> dict[str, float]:
    """The mAP@all a random ranking scores in expectation: the share of the gallery relevant to a query,
    meaned over the query classes (as the protocol means over classes). Logged as ``<stage>/chance_map_all``."""
    shares = [float((g_labels == c).float().mean()) for c in torch.unique(q_labels).tolist()]
    return {f"{stage}/chance_map_all": float(sum(shares) / len(shares))}


def hashing_chance(
    q_labels: torch.Tensor, g_labels: torch.Tensor, map_at: Iterable, stage: str
) -> dict[str, float]:
    """A random ranking's AP (CalcTopMap) is, in expectation, the share of the database relevant to the
    query (sharing a label), whatever the cut-off; averaged over queries. Logged once per cut-off name,
    e.g. ``test/chance_map_1000``."""
    q = q_labels.float() if q_labels.dim() == 2 else F.one_hot(q_labels.long()).float()
    g = g_labels.float() if g_labels.dim() == 2 else F.one_hot(g_labels.long()).float()
    width = max(q.shape[1], g.shape[1])
    q, g = F.pad(q, (0, width - q.shape[1])), F.pad(g, (0, width - g.shape[1]))
    share = float(((q @ g.T) > 0).float().mean(1).mean())
    return {f"{stage}/chance_map_{k}": share for k in map_at}


@dataclass(frozen=True)
class Protocol:
    """``metrics(q, q_labels, g, g_labels, **options)`` → ``{name: value}``; ``chance(q_labels, g_labels,
    map_at, stage)`` → the logged chance levels; ``multilabel``: takes multi-hot labels; ``ap_options``:
    takes ``ap=voc|standard``."""

    name: str
    metrics: Callable[..., dict[str, float]]
    chance: Callable[..., dict[str, float]]
    multilabel: bool
    ap_options: bool


PROTOCOLS: dict[str, Protocol] = {
    "sbir": Protocol("sbir", sbir_metrics, sbir_chance, multilabel=False, ap_options=True),
    "hashing": Protocol("hashing", hashing_metrics, hashing_chance, multilabel=True, ap_options=False),
}


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name``; a ``ValueError`` naming the known ones otherwise."""
    return PROTOCOLS[check_choice(name, tuple(PROTOCOLS), "protocol")]
