"""Image-level methods inside a sweep: finetune, scratch and head2toe_ft run as Tune trials,
log like the probe methods, and resume from Tune checkpoints after the worker dies."""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from orchestrator.config import load_config
from orchestrator.sweep import run_sweep
from sweep_helpers import runs, trial_status_counts, worker_killer, write_config

TRAINING = {"batch_size": 16, "micro_batch": 16, "select_steps": 20, "checkpoint_every": 5, "eval_batch": 64}


def image_config(tmp_path: Path, methods: dict, **extra) -> Path:
    settings = {"seeds": [0], "folds": [0, 1], "image_training": TRAINING,
                "backbones": [{"name": "efficientnet_lite0", "input_size": 32}], **extra}
    return write_config(tmp_path / "img.yaml", methods=methods, **settings)


def test_image_methods_run_as_trials_and_log_like_probes(local_ray, tmp_path):
    methods = {
        "linear": {"lr": [0.1], "steps": [30], "coef": [0.0], "target_size": [64]},
        "finetune": {"lr": [0.01], "steps": [4]},
        "scratch": {"lr": [0.01], "steps": [4]},
        "head2toe_ft": {"lr": [0.01], "steps": [4], "coef": [1.0e-3], "target_size": [64], "keep_fraction": [0.05]},
    }
    res = run_sweep(load_config(image_config(tmp_path, methods)), tmp_path / "out")
    assert res.counts["cv"] == {"trials": 8, "errors": 0} and res.counts["final"] == {"trials": 4, "errors": 0}
    trials = [r for r in runs(res.tracking_uri) if r.data.tags.get("h2t.kind") == "trial"]
    assert trial_status_counts(trials) == Counter({("cv", "FINISHED"): 8, ("final", "FINISHED"): 4})
    finals = {r.data.params["method"]: r for r in trials if r.data.tags["h2t.stage"] == "final"}
    for name in ("finetune", "scratch", "head2toe_ft"):
        m = finals[name].data.metrics
        assert 0 <= m["test_accuracy"] <= 1 and m["forward_passes"] > 0 and "cv_accuracy" in m
    assert finals["finetune"].data.params == {**finals["finetune"].data.params, "lr": "0.01", "steps": "4", "fold": "test"}
    ft = finals["head2toe_ft"]
    assert ft.data.params["keep_fraction"] == "0.05" and ft.data.metrics["n_features_kept"] < ft.data.metrics["n_features_total"]
    from mlflow.tracking import MlflowClient

    artefacts = [a.path for a in MlflowClient(res.tracking_uri).list_artifacts(ft.info.run_id, "selection")]
    assert artefacts == ["selection/kept_indices.json"]
    assert res.summary.shape == (1, 4)


@pytest.mark.slow
def test_preempted_finetune_trial_resumes_from_its_tune_checkpoint(local_ray, tmp_path):
    cfg = load_config(image_config(tmp_path, {"finetune": {"lr": [0.01], "steps": [40]}}, folds=[0], max_failures=2))
    storage = tmp_path / "out" / "tune"
    # pre-empted after Tune persisted (and, a moment later, registered) two checkpoints
    with worker_killer(lambda: len(list(storage.glob("**/checkpoint_*"))) >= 2 and not time.sleep(0.5)) as killed:
        res = run_sweep(cfg, tmp_path / "out")
    assert len(killed) == 1
    assert res.counts["cv"] == {"trials": 1, "errors": 0}
    trials = [r for r in runs(res.tracking_uri) if r.data.tags.get("h2t.kind") == "trial"]
    assert trial_status_counts(trials) == Counter({("cv", "FINISHED"): 1, ("cv", "FAILED"): 1, ("final", "FINISHED"): 1})
    (cv,) = [r for r in trials if r.data.tags["h2t.stage"] == "cv" and r.info.status == "FINISHED"]
    assert 5 <= cv.data.metrics["start_step"] < 40  # resumed from a checkpoint, not from step 0
