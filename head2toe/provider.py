"""Where features come from: a `FeatureProvider` hands out pooled features for a task split
and extracts (one forward pass per image) only what it does not already hold.

This in-memory provider is what `head2toe` needs on its own; the Parquet cache
(`head2toe.cache.FeatureCache`) plugs in as `store` (anything with `load(key, layers)` /
`save(key, features, meta)`), so every caller goes through the same door and
`forward_passes` counts what was really computed.
"""
from __future__ import annotations

import hashlib
import json
from typing import Protocol

import numpy as np

from head2toe.backbones import Backbone
from head2toe.extract import extract_features
from head2toe.features import LayerFeatures
from head2toe.tasks.base import Task

FORMAT_VERSION = 1


class FeatureStore(Protocol):
    def load(self, key: str, layers: list[str] | None = None) -> LayerFeatures | None: ...
    def save(self, key: str, features: LayerFeatures, meta: dict) -> None: ...


def feature_key(task: Task, split: str, backbone: Backbone, target_size: int, dtype: str = "float16") -> str:
    """Digest of exactly what decides the features: task definition, split, backbone identity
    (timm id, weights digest, input size, preprocessing), target size, storage dtype."""
    ident = {
        "format": FORMAT_VERSION,
        "task": task.definition(),
        "split": split,
        "backbone": backbone.identity(),
        "layers": backbone.layer_names,
        "target_size": int(target_size),
        "dtype": dtype,
    }
    blob = json.dumps(ident, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


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
            fresh = extract_features(
                self.backbone, data, missing, batch_size=self.batch_size, dtype=np.dtype(self.dtype),
                progress=f"{task.name}/{split} {self.backbone.name}" if self.progress else False,
            )
            self.forward_passes += len(data)
            for t, feats in fresh.items():
                feats.meta.update({"task": task.name, "split": split, "target_size": t, "key": keys[t]})
                self._memory[keys[t]] = feats
                if self.store is not None:
                    self.store.save(keys[t], feats, self.describe(task, split, t))
                found[t] = feats.subset(layers) if layers else feats
        return {t: found[t] for t in target_sizes}

    def describe(self, task: Task, split: str, target_size: int) -> dict:
        """Metadata recorded beside stored features."""
        info = {i["name"]: list(i["shape"]) for i in self.backbone.feature_info()}
        return {
            "task": task.name,
            "task_definition": task.definition(),
            "split": split,
            "target_size": target_size,
            "layer_shapes": info,
            **self.backbone.identity(),
        }
