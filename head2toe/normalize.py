"""Per-layer unit-L2 normalisation, applied at use time (never stored).

Head2Toe normalises every layer block to unit norm before concatenation, and again
after selection on the kept features of each layer; storing raw pooled activations
keeps both possible from one cache.
"""
from __future__ import annotations

import numpy as np
import torch


def unit_normalize(x: torch.Tensor | np.ndarray, eps: float = 1e-12):
    """Scale each row to unit L2 norm; an all-zero row stays zero (no NaN)."""
    if isinstance(x, np.ndarray):
        x = x.astype(np.float32, copy=False)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.maximum(norms, eps)
    x = x.float()
    return x / x.norm(dim=1, keepdim=True).clamp_min(eps)


def concat_normalized(blocks: list[torch.Tensor | np.ndarray]) -> torch.Tensor:
    """Unit-normalise each layer block, then concatenate along features."""
    return torch.cat([torch.as_tensor(unit_normalize(b)) for b in blocks], dim=1)
