"""Cache keys: a digest of exactly what decides a split's features (and the format version)."""
from __future__ import annotations

from head2toe.backbones import Backbone
from head2toe.cache.format import FORMAT_VERSION
from head2toe.hashing import short_hash
from head2toe.tasks.base import Task


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
    return short_hash(ident, 24)
