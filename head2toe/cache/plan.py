"""What an extraction will write, whether it fits, and filling the cache for one split.

Shared by `h2t extract` (in-process) and the Ray fan-out (orchestrator.extraction), so both
skip what is cached, estimate the same sizes and run the backbone once per split.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from head2toe.backbones import Backbone
from head2toe.cache.store import FeatureCache
from head2toe.errors import H2TError
from head2toe.pooling import pooled_size
from head2toe.provider import FeatureProvider, feature_key
from head2toe.tasks.base import Task

ROW_OVERHEAD = 16  # index + label, int64 each


@dataclass(frozen=True)
class CacheItem:
    """One file of the cache: a task split through one backbone at one target size."""

    task: str
    split: str
    backbone: str
    target_size: int
    key: str
    rows: int
    features: int
    bytes: int
    cached: bool

    def as_dict(self) -> dict:
        return asdict(self)


def layer_widths(backbone: Backbone, target_size: int) -> dict[str, int]:
    """Features per layer after pooling to `target_size` (from shapes, no images needed)."""
    return {i["name"]: pooled_size(tuple(i["shape"]), target_size) for i in backbone.feature_info()}


def file_bytes(rows: int, features: int, dtype: str) -> int:
    """Bytes of one uncompressed file (the footer adds a few KiB)."""
    return rows * (features * np.dtype(dtype).itemsize + ROW_OVERHEAD)


def plan_split(cache: FeatureCache, backbone: Backbone, task: Task, split: str, target_sizes: list[int]) -> list[CacheItem]:
    """One item per target size; `cached` means a valid file is there, every digest checked
    (reading is far cheaper than the forward pass a bad file would cost later)."""
    rows = task.split_sizes()[split]
    items = []
    for t in target_sizes:
        key = feature_key(task, split, backbone, t, cache.dtype)
        n_feat = sum(layer_widths(backbone, t).values())
        items.append(CacheItem(task.name, split, backbone.name, t, key, rows, n_feat, file_bytes(rows, n_feat, cache.dtype),
                               cache.contains(key)))
    return items


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def check_room(cache: FeatureCache, needed: int, min_free: int = 0) -> str:
    """A one-line size report; raises H2TError when the storage says it lacks room."""
    free = cache.free_bytes()
    if free is None:
        return f"will write {human_bytes(needed)} to {cache.uri} (free space unknown for this storage)"
    if needed + min_free > free:
        keep = f" and keep {human_bytes(min_free)} free" if min_free else ""
        raise H2TError(f"feature cache {cache.uri} has {human_bytes(free)} free but this extraction writes "
                       f"{human_bytes(needed)}{keep}; free space, lower --target-size, or pass --cache elsewhere")
    return f"will write {human_bytes(needed)} to {cache.uri} ({human_bytes(free)} free)"


def fill_split(cache: FeatureCache, backbone: Backbone, task: Task, split: str, target_sizes: list[int],
               batch_size: int = 32, progress: bool = True) -> int:
    """Extract and store every given target size of one split in one backbone pass; returns images forwarded."""
    if not target_sizes:
        return 0
    provider = FeatureProvider(backbone, store=cache, batch_size=batch_size, progress=progress, dtype=cache.dtype)
    provider.get(task, split, list(target_sizes))
    return provider.forward_passes
