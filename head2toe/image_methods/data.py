"""Training images as one uint8 tensor, mini-batches as a pure function of (seed, step),
and light augmentation done batched on the device.

Because batch contents and augmentation depend only on (seed, step), a resumed run sees
exactly the batches an uninterrupted one would: no data-loader state to checkpoint.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from head2toe.preprocess import batches, to_input
from head2toe.registry import check_choice

AUGMENT_POLICIES = ("none", "crop", "flip", "crop_flip")
CROP_AREA = (0.75, 1.0)  # "light": a random crop of 75-100% of the area, resized back
CROP_RATIO = (3 / 4, 4 / 3)

# Tasks whose label is a position, count, distance or pose: any crop or flip can change
# the label (dSprites location, CLEVR count/distance, KITTI distance, smallNORB pose).
_NO_GEOMETRY = ("loc", "position", "count", "dist", "kitti", "azim", "elev")
# Tasks where a mirror image is another class (orientation, digits, text): crop only.
_NO_FLIP = ("ori", "digit", "svhn", "mnist")


def policy_for(task_name: str) -> str:
    """Default augmentation of a task, by its name (override with TrainConfig.augment)."""
    name = task_name.lower()
    if any(k in name for k in _NO_GEOMETRY):
        return "none"
    if any(k in name for k in _NO_FLIP):
        return "crop"
    return "crop_flip"


def check_policy(policy: str) -> str:
    return check_choice("augmentation", policy, AUGMENT_POLICIES)


def to_uint8(images: Sequence[np.ndarray] | np.ndarray, size: int, chunk: int = 256) -> torch.Tensor:
    """Images resized once to size x size, kept as uint8 NCHW (4x smaller than float)."""
    out = []
    for _, part in batches(images, chunk):
        x = to_input(part, size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        out.append(x.mul_(255).round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out) if out else torch.zeros(0, 3, size, size, dtype=torch.uint8)


def normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 NCHW -> the backbone's float input."""
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x.float() / 255 - m) / s


def _generator(*key: int) -> torch.Generator:
    seed = int(np.random.SeedSequence([int(k) for k in key]).generate_state(1)[0])
    return torch.Generator().manual_seed(seed)


def step_indices(n: int, batch: int, seed: int, step: int) -> torch.Tensor:
    """Rows of mini-batch `step`: consecutive slices of per-epoch shuffles, seeded by (seed, epoch)."""
    b = min(batch, n)
    start, stop = step * b, (step + 1) * b
    parts = []
    for epoch in range(start // n, (stop - 1) // n + 1):
        perm = torch.randperm(n, generator=_generator(seed, epoch))
        lo, hi = max(start, epoch * n) - epoch * n, min(stop, (epoch + 1) * n) - epoch * n
        parts.append(perm[lo:hi])
    return torch.cat(parts)


def augment_thetas(n: int, policy: str, seed: int, step: int) -> torch.Tensor | None:
    """Affine maps (n, 2, 3) of a random resized crop and/or horizontal flip per image of
    step `step`'s batch; None for "none". Drawn for the whole batch from a generator keyed by
    (seed, step), so they do not depend on how the batch is split into micro-batches."""
    if policy == "none":
        return None
    g = _generator(seed, step, 1)
    one = torch.ones(n, dtype=torch.float64)
    sx, sy, tx, ty = one, one.clone(), 0 * one, 0 * one
    if "crop" in policy:
        area = torch.empty(n, dtype=torch.float64).uniform_(*CROP_AREA, generator=g)
        ratio = torch.empty(n, dtype=torch.float64).uniform_(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]), generator=g).exp()
        sx, sy = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)
        tx = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * (1 - sx)
        ty = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * (1 - sy)
    if "flip" in policy:
        sx = torch.where(torch.rand(n, generator=g, dtype=torch.float64) < 0.5, -sx, sx)
    zero = 0 * one
    return torch.stack([torch.stack([sx, zero, tx], 1), torch.stack([zero, sy, ty], 1)], 1).float()


def apply_thetas(x: torch.Tensor, theta: torch.Tensor | None) -> torch.Tensor:
    """Resample a float NCHW batch by `augment_thetas`, on x's device (crops stay inside the image)."""
    if theta is None:
        return x
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
