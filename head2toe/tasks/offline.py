"""Offline tasks that need no download: procedural dSprites- and CLEVR-like scenes,
scikit-learn's digits and scikit-image's LFW faces subset.

Procedural tasks are generated from a seed per split, so every machine renders the same
images; the generator version is part of the task definition (and so of the cache key).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable

import numpy as np

from head2toe.tasks.base import ImageSplit, Task, register_task

GENERATOR_VERSION = 1


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size) + 0.5) / size
    return np.meshgrid(c, c, indexing="xy")


def _dsprite(shape: int, scale: float, theta: float, cx: float, cy: float, size: int) -> np.ndarray:
    """Binary mask of one sprite (0 square, 1 ellipse, 2 heart) on a size x size canvas."""
    x, y = _grid(size)
    dx, dy = x - cx, y - cy
    ct, st = np.cos(theta), np.sin(theta)
    u = (ct * dx + st * dy) / scale
    v = (-st * dx + ct * dy) / scale
    if shape == 0:
        return (np.abs(u) <= 0.7) & (np.abs(v) <= 0.7)
    if shape == 1:
        return (u / 1.0) ** 2 + (v / 0.5) ** 2 <= 1.0
    hu, hv = u * 1.2, -v * 1.2 + 0.25  # heart curve, tip pointing along -v
    return (hu**2 + hv**2 - 1) ** 3 - hu**2 * hv**3 <= 0


class SynthDSprites(Task):
    """dSprites-like 64x64 white sprites on black; label = x-position or orientation bin (16)."""

    group = "Structured"
    num_classes = 16
    size = 64

    def __init__(self, name: str, factor: str, n_train: int = 1000, n_test: int = 500):
        self.name, self.factor = name, factor
        self.n = {"train": n_train, "test": n_test}
        self.description = f"procedural dSprites, 16 classes of {factor}"

    def split_sizes(self) -> dict[str, int]:
        return dict(self.n)

    def definition(self) -> dict:
        return {**super().definition(), "factor": self.factor, "generator": GENERATOR_VERSION}

    def load(self, split: str) -> ImageSplit:
        self._check_split(split)
        return _render_dsprites(self.name, self.factor, split, self.n[split], self.size)


@lru_cache(maxsize=8)
def _render_dsprites(name: str, factor: str, split: str, n: int, size: int) -> ImageSplit:
    rng = np.random.default_rng([GENERATOR_VERSION, sum(map(ord, name)), SPLITS_SEED[split]])
    images = np.zeros((n, size, size, 3), np.uint8)
    labels = np.zeros(n, np.int64)
    for i in range(n):
        shape = int(rng.integers(3))
        scale = rng.uniform(0.08, 0.16)
        theta = rng.uniform(0, 2 * np.pi)
        cx, cy = rng.uniform(0.15, 0.85, size=2)
        images[i] = _dsprite(shape, scale, theta, cx, cy, size)[..., None] * 255
        if factor == "x_position":
            labels[i] = min(15, int((cx - 0.15) / 0.7 * 16))
        else:
            labels[i] = min(15, int(theta / (2 * np.pi) * 16))
    return ImageSplit(images, labels)


SPLITS_SEED = {"train": 1, "test": 2}
_COLOURS = np.array(
    [[173, 35, 35], [42, 75, 215], [29, 105, 20], [129, 74, 25], [129, 38, 192], [160, 160, 160], [41, 208, 208], [255, 238, 51]],
    np.float32,
)


class SynthClevrCount(Task):
    """CLEVR-like 80x80 scenes of 3-10 coloured discs, squares and triangles; label = count - 3."""

    name = "synth_clevr_count"
    group = "Structured"
    num_classes = 8
    size = 80
    description = "procedural scenes of 3-10 objects, 8 classes of count"

    def __init__(self, n_train: int = 1000, n_test: int = 500):
        self.n = {"train": n_train, "test": n_test}

    def split_sizes(self) -> dict[str, int]:
        return dict(self.n)

    def definition(self) -> dict:
        return {**super().definition(), "generator": GENERATOR_VERSION}

    def load(self, split: str) -> ImageSplit:
        self._check_split(split)
        return _render_clevr(split, self.n[split], self.size)


def _clevr_scene(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    x, y = _grid(size)
    shade = 0.55 + 0.25 * y + rng.uniform(-0.05, 0.05)  # floor with a light gradient
    img = np.repeat((shade * 200)[..., None], 3, axis=2).astype(np.float32)
    placed: list[tuple[float, float, float]] = []
    while len(placed) < count:
        r = rng.uniform(0.045, 0.075)
        cx, cy = rng.uniform(r + 0.02, 1 - r - 0.02, size=2)
        if any((cx - px) ** 2 + (cy - py) ** 2 < (r + pr + 0.02) ** 2 for px, py, pr in placed):
            continue
        placed.append((cx, cy, r))
        kind = rng.integers(3)
        dx, dy = x - cx, y - cy
        if kind == 0:
            mask = dx**2 + dy**2 <= r**2
        elif kind == 1:
            mask = (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)
        else:
            mask = (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
        colour = _COLOURS[rng.integers(len(_COLOURS))] * rng.uniform(0.8, 1.1)
        img[mask] = np.clip(colour, 0, 255)
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@lru_cache(maxsize=4)
def _render_clevr(split: str, n: int, size: int) -> ImageSplit:
    rng = np.random.default_rng([GENERATOR_VERSION, 7, SPLITS_SEED[split]])
    labels = rng.integers(0, 8, size=n)
    images = np.stack([_clevr_scene(rng, int(c) + 3, size) for c in labels])
    return ImageSplit(images, labels)


def _shuffled_split(images: np.ndarray, labels: np.ndarray, n_train: int, seed: int) -> dict[str, ImageSplit]:
    order = np.random.default_rng(seed).permutation(len(labels))
    tr, te = order[:n_train], order[n_train:]
    return {"train": ImageSplit(images[tr], labels[tr]), "test": ImageSplit(images[te], labels[te])}


class Preloaded(Task):
    """A small offline data set, loaded whole once (`splits()`, cached) and cut into train and test."""

    def __init__(self, name: str, num_classes: int, sizes: dict[str, int], splits: Callable[[], dict[str, ImageSplit]],
                 description: str) -> None:
        self.name, self.num_classes, self.sizes, self.splits, self.description = name, num_classes, sizes, splits, description

    def split_sizes(self) -> dict[str, int]:
        return dict(self.sizes)

    def load(self, split: str) -> ImageSplit:
        self._check_split(split)
        return self.splits()[split]


@lru_cache(maxsize=1)
def _digits() -> dict[str, ImageSplit]:
    from sklearn.datasets import load_digits

    d = load_digits()
    grey = (d.images / 16.0 * 255).astype(np.uint8)
    return _shuffled_split(np.repeat(grey[..., None], 3, axis=3), d.target, 1000, seed=0)


@lru_cache(maxsize=1)
def _faces() -> dict[str, ImageSplit]:
    from skimage.data import lfw_subset

    x = lfw_subset()
    grey = (np.clip(x, 0, 1) * 255).astype(np.uint8)
    labels = np.array([0] * 100 + [1] * 100)  # the first 100 are faces
    return _shuffled_split(np.repeat(grey[..., None], 3, axis=3), labels, 100, seed=0)


register_task("synth_dsprites_loc", lambda: SynthDSprites("synth_dsprites_loc", "x_position"))
register_task("synth_dsprites_ori", lambda: SynthDSprites("synth_dsprites_ori", "orientation"))
register_task("synth_clevr_count", SynthClevrCount)
# scikit-learn's 8x8 handwritten digits (1797): 1000 train, 797 test
register_task("digits", lambda: Preloaded("digits", 10, {"train": 1000, "test": 797}, _digits,
                                          "scikit-learn digits, 8x8 grey, 10 classes"))
# scikit-image's LFW subset: 100 faces vs 100 non-faces, 25x25 grey; 100 train, 100 test
register_task("faces", lambda: Preloaded("faces", 2, {"train": 100, "test": 100}, _faces,
                                         "scikit-image lfw_subset, face vs non-face"))
