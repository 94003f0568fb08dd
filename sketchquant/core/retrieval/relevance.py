"""Which gallery items are relevant to a chunk of queries, as the engine wants it: each row's relevant
columns (``m × L``, ascending, padded) and their number."""

from __future__ import annotations

from collections.abc import Callable

import torch


def class_relevance(
    ql: torch.Tensor, gl: torch.Tensor
) -> tuple[Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """Single-label relevance (same class): ``(relevant, n_rel of every query)``; a table of each
    class's gallery columns (ascending) is built once."""
    order = torch.argsort(gl, stable=True)
    classes, counts = torch.unique(gl, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    width = int(counts.max())
    table = torch.zeros(classes.numel(), width, dtype=torch.int64, device=gl.device)
    j = torch.arange(width, device=gl.device)
    ok = j[None, :] < counts[:, None]
    table[ok] = order[(starts[:, None] + j[None, :])[ok]]
    pos = torch.searchsorted(classes, ql).clamp(max=classes.numel() - 1)
    has = classes[pos] == ql
    n_rel = torch.where(has, counts[pos], torch.zeros_like(pos))

    def relevant(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nr = n_rel[idx]
        width_c = max(1, int(nr.max()))
        return table[pos[idx], :width_c], nr

    return relevant, n_rel


def mask_relevance(rel_fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable:
    """Relevance from a boolean ``m × N`` mask per chunk (multi-label): its columns, padded."""

    def relevant(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rel = rel_fn(idx)
        n_rel = rel.sum(1)
        width = max(1, int(n_rel.max()))
        rows, cols = rel.nonzero(as_tuple=True)
        slot = torch.arange(rows.numel(), device=rel.device) - (torch.cumsum(n_rel, 0) - n_rel)[rows]
        out = torch.zeros(rel.shape[0], width, dtype=torch.int64, device=rel.device)
        out[rows, slot] = cols
        return out, n_rel

    return relevant
