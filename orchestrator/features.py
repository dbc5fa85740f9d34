"""Features for a sweep: computed once per (task, split, backbone, target sizes), then
placed in the Ray object store so every trial on a node reads one shared copy."""
from __future__ import annotations

import hashlib
import json

import ray

from head2toe.backbones import create_backbone
from head2toe.cache import open_cache
from head2toe.provider import FeatureProvider
from head2toe.tasks import get_task
from orchestrator.config import BackboneConfig, SweepConfig
from orchestrator.plan import extraction_needs


def backbone_id(bb: BackboneConfig) -> str:
    return hashlib.sha256(json.dumps(bb.identity(), sort_keys=True).encode()).hexdigest()[:10]


def feature_ref_key(task: str, bb_id: str, split: str, target_size: int) -> str:
    return f"{task}|{bb_id}|{split}|{target_size}"


def share_features(cfg: SweepConfig, need_test: bool = True) -> tuple[dict[str, ray.ObjectRef], int]:
    """Object refs keyed by `feature_ref_key`, and the number of backbone forward passes run
    here (0 after `extract_for_sweep` filled the cache; the driver only reads it back)."""
    refs: dict[str, ray.ObjectRef] = {}
    forwards = 0
    store = open_cache(cfg.cache)
    by_backbone: dict[BackboneConfig, list[tuple[str, list[int]]]] = {}
    for task, bb, sizes in extraction_needs(cfg):
        by_backbone.setdefault(bb, []).append((task, sizes))
    for bb, jobs in by_backbone.items():
        backbone = create_backbone(bb.name, weights=bb.weights, input_size=bb.input_size, checkpoint=bb.checkpoint)
        provider = FeatureProvider(backbone, store=store, batch_size=bb.batch_size)
        for task_name, sizes in jobs:
            task = get_task(task_name)
            for split in ("train", "test") if need_test else ("train",):
                for t, feats in provider.get(task, split, sizes).items():
                    feats.check_finite()
                    feats.check_labels(task.num_classes)
                    refs[feature_ref_key(task_name, backbone_id(bb), split, t)] = ray.put(feats)
        forwards += provider.forward_passes
    return refs, forwards
