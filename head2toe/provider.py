"""Where features come from: a `FeatureProvider` hands out pooled features for a task split
and extracts (one forward pass per image) only what it does not already hold.

This in-memory provider is what `head2toe` needs on its own; the Parquet cache
(`head2toe.cache.FeatureCache`) plugs in as `store` (anything with `load(key, layers)` /
`save(key, features, meta)`), so every caller goes through the same door and
`forward_passes` counts what was really computed. A store that also has `writer` (the
cache) receives the features batch by batch as they are extracted, and what the caller gets
is then read back from it (memory-mapped locally), so extraction never holds a whole split.
"""
from __future__ import annotations

import contextlib
from typing import Protocol

import numpy as np

from head2toe.backbones import Backbone, COMPOSITE_SEP, qualify, split_qualified
from head2toe.errors import H2TError
from head2toe.cache.keys import feature_key
from head2toe.cache.plan import describe, layer_widths
from head2toe.extract import extract_features, iter_features
from head2toe.features import LayerFeatures
from head2toe.tasks.base import Task

__all__ = ["BackboneUnion", "FeatureProvider", "FeatureStore", "UnionProvider", "feature_key"]


class FeatureStore(Protocol):
    def load(self, key: str, layers: list[str] | None = None) -> LayerFeatures | None: ...
    def save(self, key: str, features: LayerFeatures, meta: dict) -> None: ...


class FeatureProvider:
    """Features of one backbone, memoised in memory and (optionally) in a persistent store."""

    def __init__(self, backbone: Backbone, store: FeatureStore | None = None, batch_size: int = 32, progress: bool = True,
                 dtype: str = "float16"):
        self.backbone = backbone
        self.store = store
        self.batch_size = batch_size
        self.progress = progress
        self.dtype = dtype
        self.forward_passes = 0
        self._memory: dict[str, LayerFeatures] = {}

    def get(self, task: Task, split: str, target_sizes: list[int], layers: list[str] | None = None) -> dict[int, LayerFeatures]:
        """{target_size: features}; all missing target sizes come from one extraction pass."""
        keys = {t: feature_key(task, split, self.backbone, t, self.dtype) for t in target_sizes}
        found: dict[int, LayerFeatures] = {}
        for t, key in keys.items():
            feats = self._memory.get(key)
            if feats is None and self.store is not None:
                feats = self.store.load(key, layers)
                if feats is not None and layers is None:
                    self._memory[key] = feats  # later calls (CV, then the final run) read it once
            if feats is not None:
                found[t] = feats.subset(layers) if layers else feats
        missing = [t for t in target_sizes if t not in found]
        if missing:
            data = task.load(split)
            desc = f"{task.name}/{split} {self.backbone.name}" if self.progress else False
            if hasattr(self.store, "writer"):
                self._stream(task, split, data, missing, keys, desc)
                for t in missing:
                    feats = self.store.load(keys[t])
                    if feats is None:
                        raise RuntimeError(f"feature cache {self.store!r} lost {keys[t]} right after writing it")
                    self._memory[keys[t]] = feats
                    found[t] = feats.subset(layers) if layers else feats
            else:
                fresh = extract_features(self.backbone, data, missing, batch_size=self.batch_size, dtype=np.dtype(self.dtype),
                                         progress=desc)
                for t, feats in fresh.items():
                    feats.meta.update({"task": task.name, "split": split, "target_size": t, "key": keys[t]})
                    self._memory[keys[t]] = feats
                    if self.store is not None:
                        self.store.save(keys[t], feats, self.describe(task, split, t))
                    found[t] = feats.subset(layers) if layers else feats
            self.forward_passes += len(data)
        return {t: found[t] for t in target_sizes}

    def _stream(self, task: Task, split: str, data, missing: list[int], keys: dict[int, str], desc) -> None:
        """One pass over `data`, each batch appended to one store writer per target size."""
        with contextlib.ExitStack() as stack:
            writers = {t: stack.enter_context(self.store.writer(keys[t], layer_widths(self.backbone, t),
                                                                self.describe(task, split, t), rows=len(data)))
                       for t in missing}
            for batch in iter_features(self.backbone, data, missing, batch_size=self.batch_size, dtype=np.dtype(self.dtype),
                                       progress=desc):
                for t, feats in batch.items():
                    writers[t].write(feats)

    def describe(self, task: Task, split: str, target_size: int) -> dict:
        """Metadata recorded beside stored features."""
        return describe(self.backbone, task, split, target_size)


class BackboneUnion:
    """What a composite backbone is to a caller of `UnionProvider`: its name ("a+b") and its
    members. It runs nothing itself; each member extracts (or reads) its own cache entries."""

    def __init__(self, members: list[Backbone]):
        self.members = members
        self.name = COMPOSITE_SEP.join(b.name for b in members)

    def __repr__(self) -> str:
        return f"BackboneUnion({self.name!r})"


class UnionProvider:
    """Features of a composite backbone: the union of its members' layers, each member's
    read from (or extracted into) that member's OWN cache entries, under the same keys a
    single-backbone run uses, so a cached member is never re-extracted. Layer names are
    qualified by member (`efficientnet_lite0/blocks.3.0`). Blocks are not copied: the union
    holds each member's (memory-mapped) blocks side by side."""

    def __init__(self, members: list[FeatureProvider]):
        self.providers = {p.backbone.name: p for p in members}
        self.backbone = BackboneUnion([p.backbone for p in members])

    @property
    def forward_passes(self) -> int:
        return sum(p.forward_passes for p in self.providers.values())

    def get(self, task: Task, split: str, target_sizes: list[int], layers: list[str] | None = None) -> dict[int, LayerFeatures]:
        wanted: dict[str, list[str] | None] = {m: None for m in self.providers}
        if layers is not None:
            wanted = {m: [] for m in self.providers}
            for name in layers:
                member, layer = split_qualified(name)
                if member not in wanted:
                    raise KeyError(f"layer {name!r} names no member of {self.backbone.name}; qualify it as member/layer")
                wanted[member].append(layer)
        parts = {m: self.providers[m].get(task, split, target_sizes, names) for m, names in wanted.items() if names != []}
        out = {}
        for t in target_sizes:
            first = next(iter(parts))
            labels = parts[first][t].labels
            merged: dict[str, np.ndarray] = {}
            for m, feats in parts.items():
                if not np.array_equal(feats[t].labels, labels):
                    raise H2TError(f"{task.name}/{split}: {m}'s cached rows do not align with {first}'s (labels differ); "
                                   "delete one member's entry to re-extract it")
                merged.update({qualify(m, k): v for k, v in feats[t].layers.items()})
            meta = {"task": task.name, "split": split, "target_size": t, "backbone": self.backbone.name,
                    "key": ",".join(str(parts[m][t].meta.get("key", "")) for m in parts)}
            out[t] = LayerFeatures(merged, labels, meta)
        return out

    def keys(self, task: Task, split: str, target_size: int, dtype: str) -> list[str]:
        """The members' cache keys of one split (a composite has no key of its own)."""
        return [feature_key(task, split, p.backbone, target_size, dtype) for p in self.providers.values()]
