"""Same config, same seed, same machine, same numbers: a small sweep run twice, each time
into a fresh MLflow store and a fresh feature cache (so extraction runs twice too), gives
identical CV accuracies, test accuracies and kept features."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.config import load_config
from orchestrator.sweep import run_sweep
from sweep_helpers import runs, write_config

METHODS = {
    "linear": {"lr": [0.1], "steps": [30], "coef": [0.0], "target_size": [64]},
    "head2toe": {"lr": [0.1], "steps": [30], "coef": [1.0e-3], "target_size": [64], "keep_fractions": [0.05, 0.2]},
}


def _outcome(tracking_uri: str) -> dict:
    """Per trial key: stage, method, the accuracies logged and (final head2toe) kept indices."""
    client, out = MlflowClient(tracking_uri), {}
    for r in runs(tracking_uri):
        if r.data.tags.get("h2t.kind") != "trial":
            continue
        assert r.info.status == "FINISHED"
        m = r.data.metrics
        row = {"stage": r.data.tags["h2t.stage"], "method": r.data.params["method"],
               "accuracy": {k: v for k, v in m.items() if "accuracy" in k}}
        if r.data.tags["h2t.stage"] == "final" and r.data.params["method"] == "head2toe":
            path = client.download_artifacts(r.info.run_id, "selection/kept_indices.json")
            row["kept"] = json.loads(Path(path).read_text())["layers"]
        out[r.data.tags["h2t.trial_key"]] = row
    return out


@pytest.mark.slow  # two sweeps with their extraction: 92 s on the shared 2-core machine at load ~15
def test_same_config_twice_gives_identical_numbers(local_ray, tmp_path):
    path = write_config(tmp_path / "det.yaml", methods=METHODS, seeds=[0], folds=[0, 1],
                        backbones=[{"name": "efficientnet_lite0", "input_size": 32}])
    got = []
    for i in range(2):
        cfg = load_config(path, cache=str(tmp_path / f"cache{i}"))
        res = run_sweep(cfg, tmp_path / f"out{i}")
        assert res.counts["forward_passes"] > 0  # an empty cache each time: the features are computed again
        got.append(_outcome(res.tracking_uri))
    first, second = got
    assert len(first) == 2 * 2 + 2  # 2 folds x (1 linear + 1 head2toe) CV runs, 2 final runs
    assert sorted(r["stage"] for r in first.values()).count("final") == 2
    assert first == second  # same trial keys, bit-identical accuracies and kept indices
    finals = [r for r in first.values() if r["stage"] == "final"]
    assert all(0 < r["accuracy"]["test_accuracy"] <= 1 for r in finals)
    assert sum(len(v) for r in finals if "kept" in r for v in r["kept"].values()) > 0
