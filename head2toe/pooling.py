"""Pool an activation so that one layer yields about `target_size` features.

This is the reference Head2Toe rule (google-research/head2toe, `flatten_and_concat` in
models/finetune.py), kept exact because the paper's feature counts (and so its tables)
depend on it. Where the computed pool size is 0 (a small map at a large target size) the
reference averages globally (`edge="global"`, the default); `edge="clamp"` instead keeps
every position (pool size 1), this project's earlier rule.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EDGES = ("global", "clamp")
DEFAULT_EDGE = "global"
POOLING = "reference: kernel=stride=floor(W/isqrt(T//C)), VALID; global mean when C>=T or pool size 0"  # in the cache key


def _check(target_size: int, edge: str) -> None:
    if not isinstance(target_size, int) or target_size <= 0:
        raise ValueError(f"target_size must be a positive integer, got {target_size!r}")
    if edge not in EDGES:
        raise ValueError(f"edge must be one of {EDGES}, got {edge!r}")


def pool_size(shape: tuple[int, ...], target_size: int, edge: str = DEFAULT_EDGE) -> int:
    """Kernel (= stride) for a (C, H, W) map or an (L, C) sequence; 0 means a global mean.

    - map: 0 when C >= T; else floor(W / floor(sqrt(T // C))).
    - sequence: 0 when C >= T; else floor(L / (T / C)).
    With `edge="clamp"` a computed 0 below C < T becomes 1.
    """
    _check(target_size, edge)
    if len(shape) == 3:
        c, _, w = shape
        if c >= target_size:
            return 0
        pool = w // math.isqrt(target_size // c)
    elif len(shape) == 2:
        length, c = shape
        if c >= target_size:
            return 0
        pool = int(length / (target_size / c))
    else:
        raise ValueError(f"no pool size for a shape of rank {len(shape)}: {shape}")
    return max(pool, 1) if edge == "clamp" else pool


def pool_to_target(x: torch.Tensor, target_size: int, edge: str = DEFAULT_EDGE) -> torch.Tensor:
    """Average-pool `x` (NCHW map, (N, L, C) tokens or (N, D)) to about `target_size`
    features per example and flatten (see `pool_size`)."""
    _check(target_size, edge)
    if x.dim() == 2:
        return x
    if x.dim() not in (3, 4):
        raise ValueError(f"cannot pool a tensor of rank {x.dim()} (shape {tuple(x.shape)}); expected 2, 3 or 4")
    pool = pool_size(tuple(x.shape[1:]), target_size, edge)
    if x.dim() == 4:
        if pool == 0:
            return x.mean(dim=(2, 3))
        return F.avg_pool2d(x, kernel_size=pool, stride=pool).flatten(1)
    if pool == 0:
        return x.mean(dim=1)
    return F.avg_pool1d(x.transpose(1, 2), kernel_size=pool, stride=pool).flatten(1)


def pooled_size(shape: tuple[int, ...], target_size: int, edge: str = DEFAULT_EDGE) -> int:
    """Feature count that `pool_to_target` yields for one example of `shape` (without batch dim)."""
    _check(target_size, edge)
    if len(shape) == 1:
        return shape[0]
    pool = pool_size(shape, target_size, edge)
    if len(shape) == 3:
        c, h, w = shape
        return c if pool == 0 else c * (h // pool) * (w // pool)
    length, c = shape
    return c if pool == 0 else c * (length // pool)
