"""Head2Toe feature selection from a group-lasso head's weights."""
from __future__ import annotations

import numpy as np


def layer_slices(widths: dict[str, int]) -> dict[str, slice]:
    """Column range of each layer in the concatenated matrix, in layer order."""
    out, start = {}, 0
    for name, w in widths.items():
        out[name] = slice(start, start + w)
        start += w
    return out


def n_keep(n_features: int, fraction: float) -> int:
    """Number of features a keep fraction yields: int(F * f), at least one."""
    if not 0 < fraction <= 1:
        raise ValueError(f"keep fraction must be in (0, 1], got {fraction!r}")
    return max(1, int(n_features * fraction))


def select_features(scores: np.ndarray, widths: dict[str, int], fraction: float) -> dict[str, np.ndarray]:
    """Top int(F * f) features by score; returns kept column indices per layer (sorted).

    Ties are broken by position (stable sort), so selection is deterministic.
    """
    k = n_keep(len(scores), fraction)
    order = np.argsort(-scores, kind="stable")[:k]
    mask = np.zeros(len(scores), dtype=bool)
    mask[order] = True
    return {name: np.flatnonzero(mask[s]) for name, s in layer_slices(widths).items()}


def select_layers(scores: np.ndarray, widths: dict[str, int], fraction: float) -> dict[str, np.ndarray]:
    """Layer-level ablation: rank layers by mean feature score, keep whole layers until the
    budget int(F * f) is spent (the first layer is always kept; a layer that would overshoot
    the budget is skipped in favour of smaller ones that fit)."""
    budget = n_keep(len(scores), fraction)
    slices = layer_slices(widths)
    ranked = sorted(slices, key=lambda name: (-float(scores[slices[name]].mean()), name))
    kept, used = {}, 0
    for name in ranked:
        w = widths[name]
        if used == 0 or used + w <= budget:
            kept[name] = np.arange(w)
            used += w
    return {name: kept.get(name, np.arange(0)) for name in widths}


def count_kept(kept: dict[str, np.ndarray]) -> int:
    return int(sum(len(v) for v in kept.values()))
