"""The Tune trial: train a batch of probe configurations on shared features, report rows.

Runs in a Ray worker. Features arrive as object-store references (one copy per node,
read zero-copy); nothing here writes to MLflow: rows go back to the driver, which logs.

Out of memory in a trial (CUDA OOM, or a RuntimeError saying "out of memory") becomes a
`TrialOutOfMemory` naming the trial's config and feature count: that trial fails (Tune
retries it per FailureConfig, its MLflow runs end FAILED) and the sweep goes on.
Fault injection for tests: `H2T_SIMULATE_OOM=<method>` (or `*`) in a worker's environment
makes that method's trials raise `torch.cuda.OutOfMemoryError` where the probe would train,
since a monkeypatch cannot reach Ray worker processes. Unset in normal use.
"""
from __future__ import annotations

import os
import time

import ray
import torch
from ray import tune

from head2toe.methods import METHODS, EvalResult
from head2toe.protocol import cv_folds
from orchestrator.features import feature_ref_key
from orchestrator.plan import TrialSpec
from orchestrator.tracking import kf_suffix


def use_assigned_cpus() -> None:
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))


SIMULATE_OOM = "H2T_SIMULATE_OOM"


class TrialOutOfMemory(RuntimeError):
    """A trial's probes did not fit in memory; the message says which config and how big."""


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def evaluate_or_explain_oom(spec: TrialSpec, tr, ev, num_classes: int) -> list[EvalResult]:
    """`METHODS[spec.method].evaluate`, with an out-of-memory error turned into one clear line."""
    method = METHODS[spec.method]
    try:
        if os.environ.get(SIMULATE_OOM) in (spec.method, "*"):
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (simulated by {SIMULATE_OOM}={os.environ[SIMULATE_OOM]})")
        return method.evaluate(tr, ev, list(spec.hps), num_classes, seed=spec.seed)
    except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
        if not _is_oom(e):
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # a reused actor starts its next trial with the memory back
        n_features = sum(tr.widths[n] for n in method.input_layers(tr.layer_names))
        hps = "; ".join(" ".join(f"{k}={v}" for k, v in spec.hp_params(hp).items()) for hp in spec.hps)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrialOutOfMemory(
            f"out of memory in trial {spec.name()}: task={spec.task} backbone={spec.backbone.name} method={spec.method} "
            f"hps=[{hps}] n_features={n_features} rows={len(tr)} heads={len(spec.hps)} ({first}); "
            "use fewer or smaller target sizes, batch_hparams: false, or more GPU memory per trial (resources.trial.gpu)"
        ) from None




def rows_for(spec: TrialSpec, results: list[EvalResult], wall_s: float, cv_accuracy: float | None, cache_key: str) -> list[dict]:
    """One row per hp: its trial key, params, metrics and (final trials) kept indices."""
    rows = []
    per_hp = wall_s / max(1, len(spec.hps))
    for hp in spec.hps:
        mine = [r for r in results if r.hp == hp]
        metrics: dict[str, float | None] = {"n_features_total": mine[0].n_features_total, "wall_time_s": per_hp, "forward_passes": 0}
        row = {"key": spec.key_for(hp), "params": spec.hp_params(hp), "cache_key": cache_key, "metrics": metrics}
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
    use_assigned_cpus()
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
    results = evaluate_or_explain_oom(spec, tr, ev, trial["num_classes"])
    rows = rows_for(spec, results, time.perf_counter() - start, trial.get("cv_accuracy"), train.meta.get("key", ""))
    best = max(r["metrics"].get("val_accuracy") or r["metrics"].get("test_accuracy") or 0 for r in rows)
    tune.report({"rows": rows, "accuracy": best})
