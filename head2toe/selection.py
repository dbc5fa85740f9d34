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
    """Layer-level ablation at the same budget int(F * f) as `select_features`: every feature
    scores its layer's mean score, then the top features are kept. So the best layers are kept
    whole and the layer at the budget's edge keeps its first columns, as the authors' code does
    (`connectivity_l2layer` scores, then top_k: ties go to the lower index)."""
    layer_scores = np.empty(len(scores))
    for s in layer_slices(widths).values():
        layer_scores[s] = scores[s].mean() if s.stop > s.start else 0.0
    return select_features(layer_scores, widths, fraction)


def count_kept(kept: dict[str, np.ndarray]) -> int:
    return int(sum(len(v) for v in kept.values()))
