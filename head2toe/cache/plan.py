"""What an extraction will write, whether it fits, and filling the cache for one split.

Shared by `h2t extract` (in-process) and the Ray fan-out (orchestrator.extraction), so both
skip what is cached, estimate the same sizes and run the backbone once per split (or once
per shard: `shard_ranges` cuts a large split into row ranges, `fill_split(part=...)` writes
one part of each entry).
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import numpy as np

from head2toe.backbones import Backbone
from head2toe.cache.format import ROW_OVERHEAD
from head2toe.cache.keys import feature_key
from head2toe.cache.store import FeatureCache
from head2toe.errors import H2TError
from head2toe.extract import iter_features, row_range
from head2toe.pooling import pooled_size
from head2toe.tasks.base import Task


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


def plan_split(cache: FeatureCache, backbone: Backbone, task: Task, split: str, target_sizes: list[int],
               verify_data: bool = True) -> list[CacheItem]:
    """One item per target size; `cached` means a valid entry is there: every digest checked
    (streamed, one row group at a time), or with verify_data=False its footers only (a sweep's
    driver: at paper scale re-reading the cache would take hours; trials check digests where
    they read)."""
    rows = task.split_sizes()[split]
    items = []
    for t in target_sizes:
        key = feature_key(task, split, backbone, t, cache.dtype)
        n_feat = sum(layer_widths(backbone, t).values())
        items.append(CacheItem(task.name, split, backbone.name, t, key, rows, n_feat, file_bytes(rows, n_feat, cache.dtype),
                               cache.contains(key, verify_data=verify_data)))
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


def shard_ranges(rows: int, split_bytes: int, shard_bytes: int | None, batch_size: int) -> list[tuple[int, int]]:
    """Row ranges of the parts a split of `split_bytes` is extracted in: one when it fits in
    `shard_bytes` (or that is None), else ceil(split_bytes / shard_bytes) near-equal parts whose
    boundaries fall on whole batches, so every image meets the backbone in the same batch as
    in a one-piece extraction (features then come out bit-identical)."""
    batches_total = -(-rows // batch_size)
    count = 1 if not shard_bytes or split_bytes <= shard_bytes else min(batches_total, -(-split_bytes // shard_bytes))
    count = max(1, count)
    edges = [min(rows, (i * batches_total // count) * batch_size) for i in range(count + 1)]
    return [(a, b) for a, b in zip(edges, edges[1:])]


def describe(backbone: Backbone, task: Task, split: str, target_size: int) -> dict:
    """Metadata recorded beside stored features (what FeatureProvider.describe records)."""
    return {"task": task.name, "task_definition": task.definition(), "split": split, "target_size": target_size,
            "layer_shapes": {i["name"]: list(i["shape"]) for i in backbone.feature_info()}, **backbone.identity()}


def fill_split(cache: FeatureCache, backbone: Backbone, task: Task, split: str, target_sizes: list[int],
               batch_size: int = 32, progress: bool = True, part: tuple[int, int, int, int] | None = None) -> int:
    """Extract and store every given target size of one split (or of one part: `part = (index,
    count, start, stop)`, rows [start, stop)) in one backbone pass, streamed row group by row
    group into the cache; returns images forwarded. Memory: backbone, a batch, a row group
    per target size."""
    if not target_sizes:
        return 0
    data = task.load(split)
    if part is not None:
        index, count, start, stop = part
        data = row_range(data, start, stop)
    desc = f"{task.name}/{split} {backbone.name}" if progress else False
    with contextlib.ExitStack() as stack:
        writers = {}
        for t in target_sizes:
            key = feature_key(task, split, backbone, t, cache.dtype)
            w = cache.writer(key, layer_widths(backbone, t), describe(backbone, task, split, t), rows=len(data),
                             part=None if part is None else (part[0], part[1]), row_start=0 if part is None else part[2])
            writers[t] = stack.enter_context(w)
        for batch in iter_features(backbone, data, list(target_sizes), batch_size=batch_size, dtype=np.dtype(cache.dtype),
                                   progress=desc):
            for t, feats in batch.items():
                writers[t].write(feats)
    return len(data)
