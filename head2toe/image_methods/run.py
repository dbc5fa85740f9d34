"""One image-level trial (`run_image_method`, what a Tune trial calls) and the CV protocol
around it (`run_image_protocol`, what `h2t run --method finetune|scratch|head2toe_ft` does).

BatchNorm (`BN_DEFAULT`): finetune and scratch train with batch statistics, as VTAB's
fine-tuning did (scratch must: its running statistics start meaningless). head2toe_ft keeps
BatchNorm on the pretrained running statistics (affine weights still train): the kept
features were scored and their normalisation fixed on exactly those activations, so at step
0 the head sees the Head2Toe features, and gradient accumulation is then exact.
"""
from __future__ import annotations

import copy
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from head2toe.backbones import Backbone, create_backbone
from head2toe.errors import H2TError
from head2toe.image_methods.config import IMAGE_METHODS, ImageHParams, TrainConfig
from head2toe.image_methods.data import check_policy, policy_for, to_uint8
from head2toe.image_methods.models import KeptFeaturesNet, PreLogitsNet
from head2toe.image_methods.trainer import Checkpointer, OnCheckpoint, predict, train
from head2toe.preprocess import batches
from head2toe.probe import ProbeConfig, train_probes
from head2toe.protocol import FOLDS, check_fold, choose_best, cv_folds
from head2toe.provider import FeatureProvider
from head2toe.selection import select_features
from head2toe.tasks import ImageSplit, Task, get_task

# The reference recipe sets bn="train" for all three (its unfrozen backbone runs with training=True).
BN_DEFAULT = {"finetune": "train", "scratch": "train", "head2toe_ft": "frozen"}
_EVAL_CHUNK = 2048  # images resized and moved to the device at a time when scoring


def _take(images, idx: np.ndarray):
    return images[idx] if isinstance(images, np.ndarray) else [images[int(i)] for i in idx]


def _accuracy(net: torch.nn.Module, images, labels: np.ndarray, backbone: Backbone, cfg: TrainConfig, device) -> float:
    """Accuracy on a split, resized chunk by chunk (test splits can be large)."""
    correct = 0
    for start, part in batches(images, _EVAL_CHUNK):
        x = to_uint8(part, backbone.input_size).to(device)
        pred = predict(net, x, backbone.spec.mean, backbone.spec.std, cfg.eval_batch, cfg.amp).cpu().numpy()
        correct += int((pred == labels[start : start + len(part)]).sum())
    return correct / max(1, len(labels))


def _reinit(backbone: Backbone, seed: int) -> None:
    """Scratch: a random init that depends on the trial seed (create_backbone's is fixed)."""
    import timm

    kwargs = {"img_size": backbone.input_size} if "vit" in backbone.spec.timm_id or "deit" in backbone.spec.timm_id else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = timm.create_model(backbone.spec.timm_id, pretrained=False, **kwargs)
    backbone.model.load_state_dict(fresh.state_dict())


def select_kept(task: Task, provider: FeatureProvider, rows: np.ndarray, hp: ImageHParams, cfg: TrainConfig,
                seed: int, device: torch.device, split: str = "train") -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Head2Toe's selection on the cached features of the training rows only: group-lasso
    head (at the trial's lr/steps with the reference recipe, else select_lr/select_steps),
    scores sum_j W_ij^2, top `keep_fraction`. Returns (kept columns per layer, widths)."""
    feats = provider.get(task, split, [hp.target_size])[hp.target_size].rows(rows)
    feats.check_finite()
    lr, steps = (hp.lr, hp.steps) if cfg.select_at_trial_hp else (cfg.select_lr, cfg.select_steps)
    config = ProbeConfig(lr, steps, "group", hp.coef)
    (probe,) = train_probes(feats.matrix(), feats.labels, task.num_classes, [config], seed=seed, device=device)
    return select_features(probe.feature_scores(), feats.widths, hp.keep_fraction), feats.widths


@dataclass
class _Rows:
    """Where a trial trains and what it is scored on."""

    split: str  # the task split the training rows come from
    train: ImageSplit
    rows: np.ndarray  # training rows of `train`
    eval_images: object
    eval_labels: np.ndarray


@dataclass
class _Net:
    """The network to train, with head2toe_ft's selection (stored in every checkpoint)."""

    net: torch.nn.Module
    n_features_total: int
    extra: dict = field(default_factory=dict)
    kept: dict[str, np.ndarray] | None = None
    widths: dict[str, int] | None = None
    extraction_passes: int = 0


def _rows(task: Task, fold: int | None) -> _Rows:
    """fold None: all training rows, scored on test; fold k: CV fold k of the task's cv_split."""
    if fold is None:
        train_split, test = task.load("train"), task.load("test")
        return _Rows("train", train_split, np.arange(len(train_split)), test.images, np.asarray(test.labels))
    check_fold(fold)
    train_split = task.load(task.cv_split)
    rows, val = cv_folds(len(train_split))[fold]
    return _Rows(task.cv_split, train_split, rows, _take(train_split.images, val), np.asarray(train_split.labels[val]))


def _backbone(method: str, name: str, weights: str, input_size: int | None, checkpoint: str | None, seed: int,
              device: torch.device) -> Backbone:
    """The backbone to train: scratch always starts from a random init seeded by `seed`."""
    backbone = create_backbone(name, weights=weights, input_size=input_size, checkpoint=checkpoint, device=device)
    if method == "scratch":
        _reinit(backbone, seed)
    return backbone


def _network(method: str, backbone: Backbone, task: Task, hp: ImageHParams, cfg: TrainConfig, seed: int, device: torch.device,
             data: _Rows, state: dict | None, provider: FeatureProvider | None) -> _Net:
    """head2toe_ft: the backbone with a head on the features Head2Toe keeps (selected on the
    training rows' cached features, or restored from the checkpoint); else a pre-logits head."""
    if method != "head2toe_ft":
        net = PreLogitsNet(backbone, task.num_classes, cfg.head_init, seed)
        return _Net(net, net.n_features)
    passes = 0
    if state is not None:
        kept = {k: v.numpy() for k, v in state["extra"]["kept"].items()}
        widths = dict(state["extra"]["widths"])
    else:
        provider = provider or FeatureProvider(copy.deepcopy(backbone), progress=False)
        if provider.backbone.identity() != backbone.identity():
            raise H2TError(f"provider features come from {provider.backbone.identity()}, not {backbone.identity()}")
        before = provider.forward_passes
        kept, widths = select_kept(task, provider, data.rows, hp, cfg, seed, device, data.split)
        passes = provider.forward_passes - before
    extra = {"kept": {k: torch.as_tensor(v, dtype=torch.long) for k, v in kept.items()}, "widths": widths}
    net = KeptFeaturesNet(backbone, kept, hp.target_size, task.num_classes, cfg.head_init, seed)
    return _Net(net, int(sum(widths.values())), extra, kept, widths, passes)


def run_image_method(
    task: Task | str,
    backbone_name: str,
    method: str,
    hp: ImageHParams | Mapping,
    seed: int = 0,
    fold: int | None = None,
    *,
    config: TrainConfig | None = None,
    checkpoint_dir: str | Path | None = None,
    on_checkpoint: OnCheckpoint | None = None,
    device: str | torch.device | None = None,
    input_size: int | None = None,
    weights: str = "pretrained",
    checkpoint: str | None = None,
    provider: FeatureProvider | None = None,
) -> dict:
    """Train `method` on the task's training rows and score it.

    `fold=None`: train on the whole training split, report `test_accuracy`; `fold=k`: train
    on CV fold k's 800 rows, report `val_accuracy` on its 200. `scratch` always starts from a
    random init seeded by `seed` (`weights` applies to finetune and head2toe_ft). With
    `checkpoint_dir`, a checkpoint is written every `config.checkpoint_every` steps and at the
    end, `on_checkpoint(step, directory, train_loss)` is called after each, and a run that
    finds one there resumes from it (head2toe_ft also reuses the stored selection).
    `provider` (head2toe_ft) supplies cached features of the same pretrained backbone.
    """
    start_time = time.perf_counter()
    method = IMAGE_METHODS[method].name  # an unknown name is refused here
    hp = ImageHParams.from_any(hp)
    hp.check_for(method)
    cfg = config or TrainConfig()
    task = get_task(task) if isinstance(task, str) else task
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    weights = "random" if method == "scratch" else weights
    backbone = _backbone(method, backbone_name, weights, input_size, checkpoint, seed, device)
    policy = check_policy(cfg.augment or policy_for(task.name))
    bn_mode = cfg.bn or BN_DEFAULT[method]
    data = _rows(task, fold)

    identity = {"task": task.definition(), "backbone": backbone.identity(), "method": method, "hp": hp.as_dict(),
                "seed": seed, "fold": fold, "config": cfg.as_dict(), "bn": bn_mode, "augment": policy}
    ckpt = Checkpointer(checkpoint_dir, identity, cfg.checkpoint_every, on_checkpoint) if checkpoint_dir else None
    state = ckpt.load() if ckpt is not None else None
    model = _network(method, backbone, task, hp, cfg, seed, device, data, state, provider)
    net = model.net.to(device).requires_grad_(True)
    if device.type == "cuda":
        net.to(memory_format=torch.channels_last)

    images = to_uint8(_take(data.train.images, data.rows), backbone.input_size).to(device)
    labels = torch.as_tensor(data.train.labels[data.rows], device=device)
    outcome = train(net, images, labels, hp.lr, hp.steps, seed, cfg, bn_mode, policy, backbone.spec.mean,
                    backbone.spec.std, checkpointer=ckpt, resume=state, extra=model.extra)
    acc = _accuracy(net, data.eval_images, data.eval_labels, backbone, cfg, device)
    out = {"task": task.name, "backbone": backbone.name, "method": method, "seed": seed, "fold": fold, **hp.as_dict(),
           "test_accuracy" if fold is None else "val_accuracy": acc,
           "n_features_total": model.n_features_total, "n_features_kept": net.n_features, "train_loss": outcome.train_loss,
           "wall_time_s": round(time.perf_counter() - start_time, 3),
           "forward_passes": model.extraction_passes + outcome.images_forwarded + len(data.eval_labels),
           "start_step": outcome.start_step, "weights": weights, "input_size": backbone.input_size,
           "bn": bn_mode, "augment": policy, "device": str(device)}
    if model.kept is not None:
        out["kept"] = {k: v.tolist() for k, v in model.kept.items() if len(v)}
        out["widths"] = model.widths
    return out


def expand_image_grid(method: str, grid: Mapping[str, Sequence]) -> list[ImageHParams]:
    """Cartesian product of a grid dict (keys: ImageHParams fields) in a fixed order."""
    keys = [k for k in ("target_size", "coef", "keep_fraction", "steps", "lr") if k in grid]
    points = [ImageHParams.from_any(dict(zip(keys, values))) for values in itertools.product(*(grid[k] for k in keys))]
    for p in points:
        p.check_for(method)
    return points


def run_image_protocol(task: Task | str, backbone_name: str, method: str, grid: list[ImageHParams], seed: int = 0,
                       fold: int | None = None, **kwargs) -> dict:
    """`h2t run` for image methods: with `fold`, each grid point's validation accuracy on it
    (best reported); else CV over 5 folds when the grid has several points, then the chosen
    point trained on all training rows and scored on test. `kwargs` go to run_image_method
    (one feature provider serves every head2toe_ft selection, so extraction happens once);
    a `checkpoint_dir` gets one sub-folder per trial."""
    start = time.perf_counter()
    folds = [fold] if fold is not None else (FOLDS if len(grid) > 1 else [])
    root = kwargs.pop("checkpoint_dir", None)

    def trial_dir(hp: ImageHParams, k: int | None) -> Path | None:
        """One checkpoint folder per trial under `root`."""
        if root is None:
            return None
        name = "_".join(f"{key}{value}" for key, value in hp.as_dict().items() if value is not None)
        return Path(root) / f"{'test' if k is None else f'fold{k}'}_{name}"

    rows, passes = [], 0
    for k in folds:
        for hp in grid:
            r = run_image_method(task, backbone_name, method, hp, seed, k, checkpoint_dir=trial_dir(hp, k), **kwargs)
            passes += r["forward_passes"]
            rows.append({**r, "target_size": hp.target_size or 0, "accuracy": r["val_accuracy"]})
    if fold is not None:
        best_row = max(rows, key=lambda r: r["accuracy"])
        out = {k: v for k, v in best_row.items() if k not in ("accuracy",)}
        out["target_size"] = best_row["target_size"] or None
    else:
        if rows:
            best = choose_best(rows)
            hp = ImageHParams(best["lr"], best["steps"], best["coef"], best["target_size"] or None, best["keep_fraction"])
        else:
            hp = grid[0]
        out = run_image_method(task, backbone_name, method, hp, seed, None, checkpoint_dir=trial_dir(hp, None), **kwargs)
        passes += out["forward_passes"]
        if rows:
            out["cv_accuracy"] = best["mean_accuracy"]
            out["cv_results"] = rows
    out["forward_passes"] = passes
    out["wall_s"] = round(time.perf_counter() - start, 2)
    return out
