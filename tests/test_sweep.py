"""The sweep on a real local Ray and a real MLflow store: counts, params, nesting, resume."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from head2toe.errors import H2TError
from jobs.sweep import print_expected
from orchestrator.config import load_config
from orchestrator.expected import parse_expected
from orchestrator.plan import cv_specs
from orchestrator.sweep import run_sweep
from sweep_helpers import finished_cv_runs, runs, trial_status_counts, write_config

# one rule that holds whatever the numbers, one that cannot
EXPECTED = {"source": "a note, not a rule", "faces": {"head2toe_minus_linear_at_least": -100, "linear_at_most": -1}}


def test_small_sweep_runs_params_nesting_and_resume(local_ray, tmp_path, capsys):
    cfg = load_config(write_config(tmp_path / "tiny.yaml", expected=EXPECTED))
    res = run_sweep(cfg, tmp_path / "out")
    all_runs = runs(res.tracking_uri)
    by_id = {r.info.run_id: r for r in all_runs}
    kinds = Counter(r.data.tags["h2t.kind"] for r in all_runs)
    # 2 folds x (1 linear hp + 2 head2toe hps) CV runs; 2 methods x 2 seeds final runs
    assert trial_status_counts(all_runs) == Counter({("cv", "FINISHED"): 6, ("final", "FINISHED"): 4})
    assert kinds == Counter({"trial": 10, "stage": 3, "sweep": 1})
    assert res.counts["final"] == {"trials": 1, "errors": 0}  # one Tune trial fits and scores all 4 final runs
    for r in all_runs:
        tags, params = r.data.tags, r.data.params
        if tags["h2t.kind"] == "trial":
            stage = by_id[tags["mlflow.parentRunId"]]
            assert stage.data.tags["h2t.kind"] == "stage" and stage.data.tags["h2t.stage"] == tags["h2t.stage"]
            assert by_id[stage.data.tags["mlflow.parentRunId"]].data.tags["h2t.kind"] == "sweep"
            assert {"task", "task_group", "backbone", "method", "seed", "fold", "stage", "lr", "steps", "coef", "target_size"} <= set(params)
            assert params["task"] == "faces" and params["backbone"] == "efficientnet_lite0"
            assert params["backbone_timm_id"] == "tf_efficientnet_lite0"  # the pinned tag the name resolved to
            assert len(tags["h2t.trial_key"]) == 20 and tags["h2t.git_commit"]
            metrics = r.data.metrics
            if tags["h2t.stage"] == "cv":
                assert params["fold"] in {"0", "1"} and 0 <= metrics["val_accuracy"] <= 1
                if params["method"] == "head2toe":
                    assert params["keep_fractions"] == "0.05,0.2"
                    assert {"val_accuracy/kf_0.05", "val_accuracy/kf_0.2", "n_features_kept/kf_0.05"} <= set(metrics)
            else:
                assert params["fold"] == "test" and 0 <= metrics["test_accuracy"] <= 1
                assert 0 < metrics["n_features_kept"] <= metrics["n_features_total"]
    finals = [r for r in all_runs if r.data.tags.get("h2t.stage") == "final" and r.data.params.get("method") == "head2toe"]
    assert all(r.data.params["keep_fraction"] in {"0.05", "0.2"} for r in finals)
    assert len({r.data.tags["h2t.trial_key"] for r in all_runs if r.data.tags["h2t.kind"] == "trial"}) == 10
    assert res.summary.shape == (1, 2)
    capsys.readouterr()
    assert print_expected(cfg, res) == 1
    lines = capsys.readouterr().out.splitlines()
    linear = res.means[("faces", "efficientnet_lite0", "linear")]
    gap = res.means[("faces", "efficientnet_lite0", "head2toe")] - linear
    assert 0 <= linear <= 100
    assert lines == [f"h2t: expected faces: head2toe - linear >= -100 (efficientnet_lite0): met, measured {gap:.1f}",
                     f"h2t: expected faces: linear <= -1 (efficientnet_lite0): MISSED, measured {linear:.1f}"]

    again = run_sweep(cfg, tmp_path / "out", resume=True)
    assert again.sweep_id == res.sweep_id
    assert again.counts["cv"]["trials"] == 0 and again.counts["final"]["trials"] == 0
    assert len(runs(res.tracking_uri)) == len(all_runs)  # no run added


def test_killed_driver_then_resume_runs_every_trial_once(tmp_path):
    path = write_config(tmp_path / "kill.yaml", batch_hparams=False, folds=[0, 1, 2, 3, 4], seeds=[0],
                        methods={"head2toe": {"lr": [0.1, 0.05], "steps": [60], "coef": [1.0e-4, 1.0e-3], "target_size": [128],
                                              "keep_fractions": [0.05, 0.2]}},
                        max_concurrent_trials=1)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "jobs.sweep", str(path), "--out", str(out), "--address", "local"]
    uri = f"sqlite:///{(out / 'mlflow.db').resolve()}"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            if finished_cv_runs(out / "mlflow.db") >= 4:
                break
            assert proc.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.5)
        else:
            pytest.fail("no CV trial finished in time")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.wait()
    before = trial_status_counts(runs(uri))
    assert 4 <= before[("cv", "FINISHED")] < 20 and before[("final", "FINISHED")] == 0
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    trials = [r for r in runs(uri) if r.data.tags["h2t.kind"] == "trial"]
    finished = Counter(r.data.tags["h2t.trial_key"] for r in trials if r.info.status == "FINISHED")
    cfg = load_config(path)
    expected = {k for s in cv_specs(cfg) for k in s.keys()}
    assert len(expected) == 20
    assert {k for k in finished if k in expected} == expected
    assert set(finished.values()) == {1}  # every trial finished exactly once
    assert sum(1 for r in trials if r.data.tags["h2t.stage"] == "final" and r.info.status == "FINISHED") == 1
    assert not [r for r in trials if r.info.status == "RUNNING"]
    finished_before = before[("cv", "FINISHED")]
    assert "marked FAILED" in resumed.stdout or sum(1 for r in trials if r.info.status == "FAILED") == 0
    assert sum(1 for r in trials if r.data.tags["h2t.stage"] == "cv" and r.info.status == "FINISHED") == 20 >= finished_before


@pytest.mark.parametrize("rules,message", [
    ({"cifar": {"linear_at_least": 1}}, "expected.cifar: not a task of this sweep"),
    ({"faces": {"linear_above": 1}}, "expected.faces.linear_above: a rule ends in _at_least or _at_most"),
    ({"faces": {"finetune_minus_linear_at_least": 1}}, "'finetune' is not a method of this sweep; choose from linear, head2toe"),
    ({"faces": {"linear_at_least": "high"}}, "the bound is accuracy points, a number; got 'high'"),
    ({"faces": 15}, "expected.faces: give rules such as"),
])
def test_bad_expected_rules_are_one_line_before_compute(rules, message):
    with pytest.raises(H2TError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_expected(rules, ["faces"], ["linear", "head2toe"])
    assert parse_expected({"source": "paper", **{"faces": {"head2toe_minus_linear_at_least": 15}}}, ["faces"], ["linear", "head2toe"])
