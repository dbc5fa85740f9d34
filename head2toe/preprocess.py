"""Image batches to backbone input: resize to the input size, scale, normalise (in torch).

The default resize is the reference's (task_adaptation `preprocess_fn`: `tf.image.resize`,
bilinear with half-pixel centres, no antialiasing, on float pixels, before scaling).
"uint8_antialias" (this project's earlier rule) resizes the uint8 pixels with antialiasing,
which differs only when shrinking an image (then it averages instead of aliasing) and by
rounding to whole grey levels.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

RESIZES = {
    "float_bilinear": "bilinear on float, no antialias (tf.image.resize, the reference)",
    "uint8_antialias": "bilinear+antialias on uint8",
}
DEFAULT_RESIZE = "float_bilinear"
RESIZE = RESIZES[DEFAULT_RESIZE]  # recorded in the feature-cache key


def _rgb(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img)
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return a[..., :3]


def resize(batch: torch.Tensor, size: int, method: str = DEFAULT_RESIZE) -> torch.Tensor:
    """uint8 NCHW -> size x size: float32 pixels in 0..255 ("float_bilinear") or uint8
    ("uint8_antialias")."""
    if method not in RESIZES:
        raise ValueError(f"resize must be one of {tuple(RESIZES)}, got {method!r}")
    if method == "uint8_antialias":
        if batch.shape[-2:] == (size, size):
            return batch
        return F.interpolate(batch, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    x = batch.float()
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=False, align_corners=False)


def to_input(images: Sequence[np.ndarray] | np.ndarray, size: int, mean, std, method: str = DEFAULT_RESIZE) -> torch.Tensor:
    """uint8 HWC images (equal or mixed sizes, grey or RGB) -> normalised float NCHW at size x size."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        x = resize(torch.from_numpy(np.ascontiguousarray(_rgb(images))).permute(0, 3, 1, 2), size, method)
    else:
        x = torch.cat([resize(torch.from_numpy(np.ascontiguousarray(_rgb(img))).permute(2, 0, 1)[None], size, method)
                       for img in images])
    x = x.float().div_(255.0)
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous()


def batches(images: Sequence[np.ndarray] | np.ndarray, batch_size: int) -> Iterator[tuple[int, Sequence[np.ndarray]]]:
    for start in range(0, len(images), batch_size):
        yield start, images[start : start + batch_size]
