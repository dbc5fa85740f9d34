"""Pool an activation so that one layer yields about `target_size` features.

This is the reference Head2Toe rule (google-research/head2toe), kept exact because the
paper's feature counts (and so its tables) depend on it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _check_target(target_size: int) -> None:
    if not isinstance(target_size, int) or target_size <= 0:
        raise ValueError(f"target_size must be a positive integer, got {target_size!r}")


def pool_to_target(x: torch.Tensor, target_size: int) -> torch.Tensor:
    """Average-pool `x` to roughly `target_size` features per example and flatten.

    - NCHW map with C channels, width W: global average when C >= T; else
      n = floor(sqrt(T // C)), pool = W // n, avg-pool with kernel = stride = pool.
    - Tokens (N, L, C): mean over tokens when C >= T; else pool = floor(L / (T / C)),
      1-D avg-pool over tokens with kernel = stride = pool.
    - (N, D) passes through.
    """
    _check_target(target_size)
    if x.dim() == 2:
        return x
    if x.dim() == 4:
        c, w = x.shape[1], x.shape[3]
        if c >= target_size:
            return x.mean(dim=(2, 3))
        n = max(1, math.isqrt(target_size // c))
        pool = max(1, w // n)
        return F.avg_pool2d(x, kernel_size=pool, stride=pool).flatten(1)
    if x.dim() == 3:
        length, c = x.shape[1], x.shape[2]
        if c >= target_size:
            return x.mean(dim=1)
        pool = max(1, int(length / (target_size / c)))
        pooled = F.avg_pool1d(x.transpose(1, 2), kernel_size=pool, stride=pool)
        return pooled.flatten(1)
    raise ValueError(f"cannot pool a tensor of rank {x.dim()} (shape {tuple(x.shape)}); expected 2, 3 or 4")


def pooled_size(shape: tuple[int, ...], target_size: int) -> int:
    """Feature count that `pool_to_target` yields for one example of `shape` (without batch dim)."""
    _check_target(target_size)
    if len(shape) == 1:
        return shape[0]
    if len(shape) == 3:
        c, h, w = shape
        if c >= target_size:
            return c
        n = max(1, math.isqrt(target_size // c))
        pool = max(1, w // n)
        return c * (h // pool) * (w // pool)
    if len(shape) == 2:
        length, c = shape
        if c >= target_size:
            return c
        pool = max(1, int(length / (target_size / c)))
        return c * (length // pool)
    raise ValueError(f"cannot pool a shape of rank {len(shape)}: {shape}")
