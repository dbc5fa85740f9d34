"""The Tune trial: train a batch of probe configurations on shared features, report rows.

Runs in a Ray worker. Features arrive as object-store references (one copy per node,
read zero-copy); nothing here writes to MLflow: rows go back to the driver, which logs.
"""
from __future__ import annotations

import time

import ray
import torch
from ray import tune

from head2toe.methods import METHODS, EvalResult
from head2toe.protocol import cv_folds
from orchestrator.features import feature_ref_key
from orchestrator.plan import TrialSpec
from orchestrator.tracking import kf_suffix


def _use_assigned_cpus() -> None:
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))


def hp_params(spec: TrialSpec, hp) -> dict:
    params = {"lr": hp.lr, "steps": hp.steps, "coef": hp.coef, "target_size": hp.target_size}
    if METHODS[spec.method].needs_keep_fractions:
        key = "keep_fraction" if spec.stage == "final" else "keep_fractions"
        params[key] = ",".join(repr(float(f)) for f in hp.keep_fractions)
    return params


def rows_for(spec: TrialSpec, results: list[EvalResult], wall_s: float, cv_accuracy: float | None, cache_key: str) -> list[dict]:
    """One row per hp: its trial key, params, metrics and (final trials) kept indices."""
    rows = []
    per_hp = wall_s / max(1, len(spec.hps))
    for hp in spec.hps:
        mine = [r for r in results if r.hp == hp]
        metrics: dict[str, float | None] = {"n_features_total": mine[0].n_features_total, "wall_time_s": per_hp, "forward_passes": 0}
        row = {"key": spec.key_for(hp), "params": hp_params(spec, hp), "cache_key": cache_key, "metrics": metrics}
        if spec.stage == "cv":
            metrics["val_accuracy"] = max(r.accuracy for r in mine)
            metrics["train_loss"] = min(r.train_loss for r in mine)
            if METHODS[spec.method].needs_keep_fractions:
                for r in mine:
                    metrics[f"val_accuracy/{kf_suffix(r.keep_fraction)}"] = r.accuracy
                    metrics[f"n_features_kept/{kf_suffix(r.keep_fraction)}"] = r.n_features_kept
        else:
            (r,) = mine
            metrics.update(test_accuracy=r.accuracy, cv_accuracy=cv_accuracy, n_features_kept=r.n_features_kept, train_loss=r.train_loss)
            if r.kept:
                row["kept"] = {k: v.tolist() for k, v in r.kept.items()}
                row["widths"] = {k: int(w) for k, w in r.widths.items()}
        rows.append(row)
    return rows


def feature_trial(config: dict, refs: dict, trials: list[dict]) -> None:
    """Tune function trainable for feature-level methods; `config["trial"]` indexes `trials`."""
    _use_assigned_cpus()
    trial = trials[config["trial"]]
    spec: TrialSpec = trial["spec"]
    bb_id = trial["backbone_id"]
    train_key = feature_ref_key(spec.task, bb_id, "train", spec.target_size)
    train = ray.get(refs[train_key])
    if spec.fold is None:
        tr, ev = train, ray.get(refs[feature_ref_key(spec.task, bb_id, "test", spec.target_size)])
    else:
        tr_idx, va_idx = cv_folds(len(train))[spec.fold]
        tr, ev = train.rows(tr_idx), train.rows(va_idx)
    start = time.perf_counter()
    results = METHODS[spec.method].evaluate(tr, ev, list(spec.hps), trial["num_classes"], seed=spec.seed)
    rows = rows_for(spec, results, time.perf_counter() - start, trial.get("cv_accuracy"), train.meta.get("key", ""))
    best = max(r["metrics"].get("val_accuracy") or r["metrics"].get("test_accuracy") or 0 for r in rows)
    tune.report({"rows": rows, "accuracy": best})
