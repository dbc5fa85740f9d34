"""Builders of small MLflow stores that follow docs/mlflow_schema.md exactly (what the sweep
writes), for the analysis, report and notebook tests."""
from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from head2toe.hashing import short_hash

EXPERIMENT = "h2t-test"
WIDTHS = {"stem": 40, "block1": 60, "block2": 60, "pre_logits": 40}  # 200 candidate features


def kf_suffix(fraction: float) -> str:
    return f"kf_{float(fraction)!r}"


class StoreBuilder:
    """One sweep in a SQLite store under `root`: sweep and stage parents, then trials."""

    def __init__(self, root: Path, experiment: str = EXPERIMENT, sweep_id: str = "sweep0001"):
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.experiment = experiment
        self.client = MlflowClient(self.uri)
        self.experiment_id = self.client.create_experiment(experiment, artifact_location=(root / "artifacts").as_uri())
        self.sweep_id = sweep_id
        self.clock = int(time.time() * 1000)
        sweep = self.client.create_run(self.experiment_id, run_name=f"sweep-test-{sweep_id}", tags={
            "h2t.kind": "sweep", "h2t.sweep_id": sweep_id, "h2t.config_name": "test", "h2t.git_commit": "abc123"})
        self.sweep_run = sweep.info.run_id
        self.stage_runs = {}
        for stage in ("cv", "final"):
            run = self.client.create_run(self.experiment_id, run_name=stage, tags={
                "h2t.kind": "stage", "h2t.stage": stage, "h2t.sweep_id": sweep_id, "mlflow.parentRunId": self.sweep_run})
            self.stage_runs[stage] = run.info.run_id

    def trial(self, *, stage: str, task: str, backbone: str, method: str, seed: int, fold: int | str,
              metrics: dict[str, float], task_group: str = "Natural", lr: float = 0.1, steps: int = 500, coef: float = 1e-4,
              target_size: int = 512, keep_fractions: tuple[float, ...] = (), keep_fraction: float | None = None,
              kept: dict[str, list[int]] | None = None, widths: dict[str, int] | None = None, status: str = "FINISHED") -> str:
        """One trial run; its key is a digest of what defines it, so a retry gets the same key."""
        params = {"task": task, "task_group": task_group, "backbone": backbone, "method": method, "seed": seed,
                  "fold": fold, "stage": stage, "lr": lr, "steps": steps, "coef": coef, "target_size": target_size,
                  "keep_fractions": ",".join(map(str, keep_fractions)),
                  "keep_fraction": "" if keep_fraction is None else keep_fraction}
        key = short_hash(params, 20)
        self.clock += 1  # strictly increasing start times: "newest" is well defined
        run = self.client.create_run(self.experiment_id, start_time=self.clock, run_name=f"{stage}_{task}_{backbone}_{method}_s{seed}_{fold}", tags={
            "h2t.kind": "trial", "h2t.stage": stage, "h2t.sweep_id": self.sweep_id, "h2t.trial_key": key,
            "mlflow.parentRunId": self.stage_runs[stage], "h2t.git_commit": "abc123"})
        run_id = run.info.run_id
        dead = status != "FINISHED"  # died after logging `metrics` (pass {} for a death before any)
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()],
                              metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                              tags=[] if dead else [RunTag("h2t.cache_key", "cache0001")])
        if dead:
            self.client.set_terminated(run_id, status)
            return run_id
        if kept is not None:
            self.client.log_dict(run_id, {"layers": kept, "widths": widths or WIDTHS}, "selection/kept_indices.json")
        self.client.log_text(run_id, json.dumps({"params": params, "metrics": metrics}), "result.json")
        self.client.set_terminated(run_id, "FINISHED")
        return run_id

    def final(self, task: str, backbone: str, method: str, seed: int, test_accuracy: float, *, n_total: int = 200,
              kept: dict[str, list[int]] | None = None, keep_fraction: float | None = None, **kw) -> str:
        n_kept = sum(map(len, kept.values())) if kept is not None else n_total
        metrics = {"test_accuracy": test_accuracy, "cv_accuracy": test_accuracy + 0.01, "n_features_total": n_total,
                   "n_features_kept": n_kept, "train_loss": 0.5, "wall_time_s": 1.0, "forward_passes": 0}
        return self.trial(stage="final", task=task, backbone=backbone, method=method, seed=seed, fold="test",
                          metrics=metrics, kept=kept, keep_fraction=keep_fraction, **kw)

    def cv(self, task: str, backbone: str, method: str, seed: int, fold: int, val_accuracy: float, *,
           by_fraction: dict[float, tuple[float, int]] | None = None, n_total: int = 200, **kw) -> str:
        """A CV trial; selection methods pass {keep fraction: (val accuracy, features kept)}."""
        metrics = {"val_accuracy": val_accuracy, "n_features_total": n_total, "train_loss": 0.5, "wall_time_s": 1.0,
                   "forward_passes": 0}
        for f, (acc, kept) in (by_fraction or {}).items():
            metrics[f"val_accuracy/{kf_suffix(f)}"] = acc
            metrics[f"n_features_kept/{kf_suffix(f)}"] = kept
        if by_fraction:
            metrics["val_accuracy"] = max(a for a, _ in by_fraction.values())
        return self.trial(stage="cv", task=task, backbone=backbone, method=method, seed=seed, fold=fold, metrics=metrics,
                          keep_fractions=tuple(by_fraction or ()), **kw)


def selection(rng: np.random.Generator, n_kept: int, widths: dict[str, int] = WIDTHS) -> dict[str, list[int]]:
    """A random selection of n_kept features over the layers (sorted column indices per layer)."""
    offsets = np.cumsum([0, *widths.values()])
    flat = np.sort(rng.choice(offsets[-1], n_kept, replace=False))
    return {name: [int(i - offsets[j]) for i in flat if offsets[j] <= i < offsets[j + 1]] for j, name in enumerate(widths)}


# Accuracy (fraction) per (task, method) at seed 0; seeds add 0.01 * seed. Known, so tests can
# recompute every expected number by hand.
SMALL_TASKS = {"caltech101": "Natural", "eurosat": "Specialized", "clevr_count": "Structured", "digits": "Offline"}
SMALL_ACC = {"linear": 0.60, "all_l2": 0.64, "head2toe": 0.70, "head2toe_layers": 0.66}
SCRATCH_ACC = {"caltech101": 0.30}  # scratch runs for one task only: the others borrow the paper's
SEEDS = (0, 1, 2)


def task_offset(task: str) -> float:
    return 0.02 * list(SMALL_TASKS).index(task)


def build_small_store(root: Path) -> StoreBuilder:
    """A small sweep on resnet50: final runs for 4 methods x 4 tasks x 3 seeds (+ scratch on one
    task), CV trials for the selection methods at 2 target sizes, selection artefacts, and one
    FAILED run with its FINISHED retry."""
    b = StoreBuilder(root)
    rng = np.random.default_rng(0)
    for task, group in SMALL_TASKS.items():
        for method, acc in SMALL_ACC.items():
            selecting = method in ("head2toe", "head2toe_layers")
            for seed in SEEDS:
                value = acc + task_offset(task) + 0.01 * seed
                kept = selection(rng, 20) if selecting else None
                if method == "head2toe" and seed == 0 and task == "caltech101":  # died once, then retried
                    b.final(task, "resnet50", method, seed, 0.0, task_group=group, kept=kept, keep_fraction=0.1, status="FAILED")
                b.final(task, "resnet50", method, seed, value, task_group=group, kept=kept,
                        keep_fraction=0.1 if selecting else None)
            if selecting:
                for size in (256, 512):
                    for fold in (0, 1):
                        base = acc + task_offset(task) + (0.02 if size == 512 else 0.0)
                        b.cv(task, "resnet50", method, 0, fold, base, task_group=group, target_size=size,
                             by_fraction={0.05: (base - 0.03, 10), 0.1: (base, 20)})
    for task, acc in SCRATCH_ACC.items():
        for seed in SEEDS:
            b.final(task, "resnet50", "scratch", seed, acc + 0.01 * seed, task_group=SMALL_TASKS[task])
    return b


@contextmanager
def fast_dir(fallback: Path):
    """A scratch folder in RAM when /dev/shm exists (SQLite fsyncs every commit: ~4x faster)."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield fallback
        return
    root = Path(tempfile.mkdtemp(prefix="h2t-mlflow-", dir=shm))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def store_dir(tmp_path):
    """Where a test's own MLflow store goes."""
    with fast_dir(tmp_path) as root:
        yield root


_SHARED: dict[str, StoreBuilder] = {}


@pytest.fixture(scope="session")
def small_store(tmp_path_factory) -> StoreBuilder:
    """`build_small_store`, built once per session: every test module imports this fixture (which
    gives each module its own fixture), so the store itself is cached here."""
    if "small" not in _SHARED:
        shm = Path("/dev/shm")
        if shm.is_dir() and os.access(shm, os.W_OK):
            root = Path(tempfile.mkdtemp(prefix="h2t-mlflow-", dir=shm))
            atexit.register(shutil.rmtree, root, True)
        else:
            root = tmp_path_factory.mktemp("mlflow")
        _SHARED["small"] = build_small_store(root)
    return _SHARED["small"]
