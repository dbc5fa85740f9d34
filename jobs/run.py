"""`h2t run`: one method on one task with the paper's protocol.

Without explicit hyper-parameters the small default grid is searched by 5-fold CV on the
training set; fixed flags narrow the grid. `--fold K` reports that fold's validation
accuracy instead of the test accuracy. Image-level methods (finetune, scratch, head2toe_ft)
train the backbone on the task's images with the same protocol (head2toe.image_methods).
"""
from __future__ import annotations

import argparse

from head2toe.backbones import composite_members, split_qualified
from head2toe.cache.plan import layer_widths
from head2toe.errors import H2TError
from head2toe.evaluate import fixed_or_grid, run_protocol
from head2toe.grids import DEFAULT_GRIDS
from head2toe.image_methods import DEFAULT_IMAGE_GRIDS, TrainConfig, expand_image_grid, run_image_protocol
from head2toe.image_methods.data import AUGMENT_POLICIES
from head2toe.limits import BATCH
from head2toe.methods import get_method, is_image_method, method_names
from head2toe.protocol import FOLDS, N_FOLDS
from head2toe.provider import FeatureProvider, UnionProvider, feature_key
from jobs.common import (add_backbone_args, add_data_args, build_backbone, build_cache, build_provider, checked, emit_json,
                         fraction, learning_rate, load_task, non_negative, seed, step_count, target_size)
from jobs.preflight import check_device, require_writable_or_cached


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, help="registry name (h2t tasks) or imagefolder:PATH")
    p.add_argument("--method", default="head2toe", help=f"one of: {', '.join(method_names())}")
    add_backbone_args(p)
    add_data_args(p)
    p.add_argument("--lr", type=learning_rate)
    p.add_argument("--steps", type=step_count)
    p.add_argument("--coef", type=non_negative)
    p.add_argument("--target-size", type=target_size)
    p.add_argument("--keep-fraction", type=fraction)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--fold", type=int, choices=FOLDS, metavar="K", help=f"validate on CV fold K (0-{N_FOLDS - 1})")
    where.add_argument("--test", action="store_true", help="final run on test (the default)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    img = p.add_argument_group("image-level methods (finetune, scratch, head2toe_ft)")
    img.add_argument("--train-batch", type=checked(int, "--train-batch", BATCH), default=512, help="effective batch per SGD step")
    img.add_argument("--micro-batch", type=checked(int, "--micro-batch", BATCH), help="images per forward (gradient accumulation); default: whole batch on CUDA, 32 on CPU")
    img.add_argument("--augment", choices=["auto", *AUGMENT_POLICIES], default="auto", help="auto: the task's policy")
    img.add_argument("--checkpoint-dir", help="checkpoint here every 500 steps; a rerun with the same dir resumes")


def main(args: argparse.Namespace) -> int:
    method = get_method(args.method)
    if is_image_method(method.name):
        return run_image(args)
    check_device(args.device)
    task = load_task(args)
    try:
        grid = fixed_or_grid(method, DEFAULT_GRIDS[method.name], lr=args.lr, steps=args.steps, coef=args.coef,
                             target_size=args.target_size, keep_fractions=args.keep_fraction)
    except ValueError as e:
        raise H2TError(str(e)) from None
    members = composite_members(args.backbone)  # an unknown name is refused before the cache folder is made
    backbones = [build_backbone(args, m) for m in members]
    cache = build_cache(args)
    splits = ["train"] if args.fold is not None else ["train", "test"]
    require_writable_or_cached(cache, [feature_key(task, s, b, t, cache.dtype) for t in sorted({h.target_size for h in grid})
                                       for s in splits for b in backbones])
    providers = [build_provider(args, b, progress=not args.json, cache=cache) for b in backbones]
    provider: FeatureProvider | UnionProvider = providers[0] if len(providers) == 1 else UnionProvider(providers)
    out = run_protocol(provider, task, method, grid, seed=args.seed, fold=args.fold)
    if len(backbones) > 1:
        out.update(per_backbone(out, method, backbones))
    if args.json:
        emit_json({k: v for k, v in out.items() if k not in ("cv_results", "results")})
        return 0
    details = ""
    if "kept_per_backbone" in out:
        details = "per backbone, kept / candidates: " + ", ".join(
            f"{m} {out['kept_per_backbone'][m]} / {out['candidates_per_backbone'][m]}" for m in members)
    print_summary(out, task.name, args.backbone, method.name, args.fold, details)
    return 0


def per_backbone(out: dict, method, backbones) -> dict:
    """Where a composite's features came from: each member's candidate features (the method's
    input layers at the chosen target size) and, after a test run, its kept features and
    their share of all kept ones."""
    candidates = {}
    for b in backbones:
        widths = {f"{b.name}/{k}": w for k, w in layer_widths(b, out["target_size"]).items()}
        candidates[b.name] = sum(widths[n] for n in method.input_layers(list(widths)) if n in widths)
    extra: dict = {"members": [b.name for b in backbones], "candidates_per_backbone": candidates}
    if "kept_per_layer" in out:
        kept = {b.name: 0 for b in backbones}
        for layer, n in out["kept_per_layer"].items():
            kept[split_qualified(layer)[0]] += n
        if not out["kept_per_layer"] and out["n_features_kept"] == out["n_features_total"]:
            kept = dict(candidates)  # no selection: every candidate is kept
        total = sum(kept.values())
        extra.update(kept_per_backbone=kept, kept_share_per_backbone={m: round(n / total, 4) if total else 0.0
                                                                       for m, n in kept.items()})
    return extra


def print_summary(out: dict, task: str, backbone: str, method: str, fold: int | None, details: str = "") -> None:
    """The human-readable result of `h2t run` (what --json prints as one object)."""
    acc = out.get("test_accuracy", out.get("val_accuracy"))
    split = "test" if "test_accuracy" in out else f"fold {fold} val"
    print(f"{task} | {backbone} | {method}: {split} accuracy {acc:.4f}")
    print(f"  chosen: lr={out['lr']} steps={out['steps']} coef={out['coef']} target_size={out['target_size']} keep_fraction={out['keep_fraction']}")
    if "cv_accuracy" in out:
        print(f"  {N_FOLDS}-fold CV accuracy of the chosen config: {out['cv_accuracy']:.4f}")
    if details:
        print(f"  {details}")
    print(f"  features kept {out['n_features_kept']} / {out['n_features_total']}; backbone forward passes {out['forward_passes']}; {out['wall_s']} s")


def run_image(args: argparse.Namespace) -> int:
    """finetune / scratch / head2toe_ft: CV over the small image grid (or the fixed flags), then test."""
    if len(composite_members(args.backbone)) > 1:
        raise H2TError(f"--backbone {args.backbone}: image-level method {args.method!r} trains one backbone; "
                       "composite backbones work with the feature methods (linear, all_l21, head2toe, ...)")
    check_device(args.device)
    task = load_task(args)
    default = DEFAULT_IMAGE_GRIDS[args.method]
    fixed = {"lr": args.lr, "steps": args.steps, "coef": args.coef, "target_size": args.target_size, "keep_fraction": args.keep_fraction}
    grid = expand_image_grid(args.method, {**default, **{k: [v] for k, v in fixed.items() if v is not None}})
    cfg = TrainConfig(batch_size=args.train_batch, micro_batch=args.micro_batch, augment=None if args.augment == "auto" else args.augment)
    backbone = build_backbone(args) if args.method == "head2toe_ft" else None  # frozen, for the selection's features
    provider = build_provider(args, backbone, progress=not args.json) if backbone is not None else None
    out = run_image_protocol(task, args.backbone, args.method, grid, seed=args.seed, fold=args.fold, config=cfg,
                             checkpoint_dir=args.checkpoint_dir, device=args.device, input_size=args.input_size,
                             weights=args.weights, checkpoint=args.checkpoint, provider=provider)
    out["kept_per_layer"] = {k: len(v) for k, v in out.pop("kept", {}).items()}
    out.pop("widths", None)
    if args.json:
        emit_json({k: v for k, v in out.items() if k != "cv_results"})
        return 0
    print_summary(out, task.name, out["backbone"], args.method, args.fold,
                  f"input {out['input_size']} px, BatchNorm {out['bn']}, augmentation {out['augment']}, final train loss {out['train_loss']:.4f}")
    return 0


if __name__ == "__main__":
    import sys

    from jobs._entry import standalone

    sys.exit(standalone(configure, main, "python -m jobs.run"))
