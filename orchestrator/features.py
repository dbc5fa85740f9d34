"""Where a sweep's features are, and how a trial gets them.

The driver never reads features. It computes each entry's cache key from identities alone
(task definition, split, backbone identity and layers, target size: no images, no feature
bytes) and hands trials the cache URI, their keys and the layers their method reads. A
trial loads its entry itself, column-projected, through `orchestrator.node_cache` (one copy
per node), and validates what it read (digests in the cache reader; NaN/Inf and the label
range here) before any probe trains on it.
"""
from __future__ import annotations

import hashlib
import json
from typing import Iterator

from head2toe.backbones import create_backbone
from head2toe.cache import InvalidFile
from head2toe.errors import H2TError
from head2toe.features import LayerFeatures, NormalizedFeatures
from head2toe.methods import METHODS, PRELOGITS
from head2toe.provider import feature_key
from head2toe.tasks import get_task
from orchestrator import node_cache
from orchestrator.config import BackboneConfig, SweepConfig
from orchestrator.plan import extraction_needs

EntryKey = tuple[str, str, str, int]  # (task, backbone id, split, target size)


def backbone_id(bb: BackboneConfig) -> str:
    return hashlib.sha256(json.dumps(bb.identity(), sort_keys=True).encode()).hexdigest()[:10]


def sweep_splits(cfg: SweepConfig) -> tuple[str, ...]:
    """Splits the sweep reads from the cache: train (final fits), each task's CV split, and
    test unless it streams."""
    cv = [get_task(t).cv_split for t in cfg.tasks]
    return tuple(dict.fromkeys(["train", *cv, *(["test"] if cfg.test_features == "cache" else [])]))


def sweep_keys(cfg: SweepConfig, splits: tuple[str, ...]) -> dict[EntryKey, str]:
    """Cache key of every entry the sweep's trials read (one backbone built per config, for
    its identity and layer names; its weights are not run)."""
    keys: dict[EntryKey, str] = {}
    backbones = {}
    for task_name, bb, sizes in extraction_needs(cfg):
        if bb not in backbones:
            backbones[bb] = create_backbone(bb.name, weights=bb.weights, input_size=bb.input_size, checkpoint=bb.checkpoint)
        task = get_task(task_name)
        for split in splits:
            for t in sizes:
                keys[(task_name, backbone_id(bb), split, t)] = feature_key(task, split, backbones[bb], t)
    return keys


def layers_read(methods: list[str]) -> list[str] | None:
    """The layers these methods read: only pre-logits for Linear alone, else all (None)."""
    return [PRELOGITS] if all(METHODS[m].layers == PRELOGITS for m in methods) else None


_memo: dict[tuple, NormalizedFeatures] = {}  # this process's last matrix (a reused actor's next trial of the entry)


def load_train(cache_uri: str | None, key: str, layers: list[str] | None, num_classes: int) -> NormalizedFeatures:
    """The float32 unit-normalised matrix of an entry's `layers` (all when None), filled chunk
    by chunk as the entry streams from the cache, each chunk validated first: the trial's one
    copy of its features (2x their float16 bytes), nothing else of the split held."""
    memo_key = (cache_uri, key, tuple(layers or ()))
    if memo_key not in _memo:
        _memo.clear()  # the previous trial's matrix goes before this one is built
        doc = node_cache.reader(cache_uri, key).read_meta(key)
        widths = {x["name"]: x["width"] for x in doc["layers"]}
        if layers is not None:
            widths = {n: widths[n] for n in layers}
        _memo[memo_key] = NormalizedFeatures.from_chunks(iter_entry(cache_uri, key, layers, num_classes), doc["n_rows"], widths)
    return _memo[memo_key]


def release_train() -> None:
    """Drop this process's matrix (a final trial holds only heads while the test rows stream)."""
    _memo.clear()


def iter_entry(cache_uri: str | None, key: str, layers: list[str] | None, num_classes: int) -> Iterator[LayerFeatures]:
    """An entry's rows chunk by chunk, in order, each validated before it is yielded."""
    cache = node_cache.reader(cache_uri, key)
    try:
        for chunk in cache.iter_rows(key, layers):
            chunk.check_finite()
            chunk.check_labels(num_classes)
            yield chunk
    except FileNotFoundError:
        raise H2TError(f"feature cache entry {key} is missing from {cache_uri}; rerun the sweep to extract it") from None
    except InvalidFile as e:
        raise H2TError(f"feature cache entry {key} in {cache_uri} is invalid: {e}; delete it to re-extract") from None


def check_entry(cache_uri: str | None, key: str, num_classes: int) -> int:
    """Read and validate a whole entry chunk by chunk (bounded memory); returns its rows."""
    return sum(len(chunk) for chunk in iter_entry(cache_uri, key, None, num_classes))
