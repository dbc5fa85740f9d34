"""Image batches to backbone input: resize to the input size, scale, normalise (in torch)."""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def to_input(images: Sequence[np.ndarray] | np.ndarray, size: int, mean, std) -> torch.Tensor:
    """uint8 HWC images (equal or mixed sizes, grey or RGB) -> normalised float NCHW at size x size."""
    def one(img: np.ndarray) -> torch.Tensor:
        a = np.asarray(img)
        if a.ndim == 2:
            a = a[..., None]
        if a.shape[2] == 1:
            a = np.repeat(a, 3, axis=2)
        return torch.from_numpy(np.ascontiguousarray(a[..., :3])).permute(2, 0, 1)

    if isinstance(images, np.ndarray) and images.ndim == 4:
        batch = [torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)]
        if batch[0].shape[1] == 1:
            batch = [batch[0].expand(-1, 3, -1, -1)]
    else:
        batch = [one(img)[None] for img in images]
    out = []
    for b in batch:
        b = b.float().div_(255.0)
        if b.shape[-2:] != (size, size):
            b = F.interpolate(b, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(b)
    x = torch.cat(out)
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def batches(images: Sequence[np.ndarray] | np.ndarray, batch_size: int) -> Iterator[tuple[int, Sequence[np.ndarray]]]:
    for start in range(0, len(images), batch_size):
        yield start, images[start : start + batch_size]
