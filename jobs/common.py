"""Argument groups and builders shared by the jobs (backbone, features, output)."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

from head2toe.backbones import PRETRAINED, WEIGHTS, Backbone, create_backbone
from head2toe.cache import FeatureCache
from head2toe.cache.format import DTYPES
from head2toe.limits import BATCH, COEF, INPUT_SIZE, KEEP_FRACTION, LR, SEED, STEPS, TARGET_SIZE, Rule
from head2toe.provider import FeatureProvider
from head2toe.tasks import Task, get_task
from head2toe.tasks.vtab import set_data_dir
from jobs.preflight import check_device, open_checked_cache


def add_backbone_args(p: argparse.ArgumentParser, many: bool = False) -> None:
    """Backbone and feature-cache flags; `many` lets --backbone take several names."""
    p.add_argument("--backbone", default=["efficientnet_lite0"] if many else "efficientnet_lite0", nargs="+" if many else None,
                   help="registry name (h2t backbones) or a timm model name")
    p.add_argument("--weights", default=PRETRAINED, choices=WEIGHTS)
    p.add_argument("--checkpoint", default=None, help="local checkpoint file for timm backbones")
    p.add_argument("--input-size", type=checked(int, "--input-size", INPUT_SIZE), default=None,
                   help="override the backbone's input size (px)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--batch-size", type=checked(int, "--batch-size", BATCH), default=32, help="images per backbone forward")
    p.add_argument("--cache", default=None, help="feature cache URI (folder, s3://, gs://); default $H2T_CACHE or ~/.cache/h2t/features")
    p.add_argument("--feature-dtype", default=DTYPES[0], choices=DTYPES, help="dtype of cached features")


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=os.environ.get("TFDS_DATA_DIR"),
                   help="folder of tfds-prepared data for the VTAB tasks (default $TFDS_DATA_DIR, else ~/tensorflow_datasets)")


def load_task(args: argparse.Namespace) -> Task:
    """The --task, its data checked before any model is built, so a missing dataset fails in seconds."""
    if getattr(args, "data_dir", None):
        set_data_dir(args.data_dir)
    task = get_task(args.task)
    require = getattr(task, "require_data", None)
    if require is not None:
        require()
    return task


def checked(kind: type, flag: str, rule: Rule):
    """argparse type: a `kind` that meets `rule` (head2toe.limits, as the library and the sweep
    YAML check it); the error names the flag."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            noun = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{flag} must be {noun} {rule.accepted}, got {text!r}") from None
        if not rule.ok(value):
            raise argparse.ArgumentTypeError(f"{flag} must be {rule.accepted}, got {text if len(text) <= 40 else text[:40] + '...'}")
        return value
    return parse


fraction = checked(float, "--keep-fraction", KEEP_FRACTION)
non_negative = checked(float, "--coef", COEF)
learning_rate = checked(float, "--lr", LR)
step_count = checked(int, "--steps", STEPS)
target_size = checked(int, "--target-size", TARGET_SIZE)
seed = checked(int, "--seed", SEED)


def build_backbone(args: argparse.Namespace, name: str | None = None) -> Backbone:
    import torch

    check_device(args.device)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return create_backbone(name or args.backbone, weights=args.weights, input_size=args.input_size, checkpoint=args.checkpoint, device=device)


def build_cache(args: argparse.Namespace) -> FeatureCache:
    """The persistent feature cache named by --cache (default $H2T_CACHE or ~/.cache/h2t/features),
    a remote one reached within seconds."""
    return open_checked_cache(args.cache, dtype=getattr(args, "feature_dtype", "float16"))


def build_provider(args: argparse.Namespace, backbone: Backbone, progress: bool = True, cache: FeatureCache | None = None) -> FeatureProvider:
    cache = cache or build_cache(args)
    return FeatureProvider(backbone, store=cache, batch_size=args.batch_size, progress=progress, dtype=cache.dtype)


def json_safe(o):
    """Plain JSON values: NumPy scalars and arrays unpacked, NaN and infinities as null
    (bare NaN is not JSON), anything else as its string."""
    if isinstance(o, dict):
        return {str(k): json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    if isinstance(o, np.ndarray):
        return json_safe(o.tolist())
    if isinstance(o, np.generic):
        return json_safe(o.item())
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if o is None or isinstance(o, (str, int, bool)):
        return o
    return str(o)


def emit_json(obj: dict) -> None:
    json.dump(json_safe(obj), sys.stdout, allow_nan=False)
    sys.stdout.write("\n")
