"""Sweeps on bounded memory, on a real local Ray, real MLflow (SQLite) and real cache files.

- `test_features: stream` gives the same final accuracies as a cached test split, stores no
  test entry, and forwards each test image once either way;
- the driver reads no feature bytes, on a cold and a warm cache (every column-data read of the cache reader is counted
  in the driver's process, and Python-level opens of cache files are audited);
- on a local multi-node cluster (`ray.cluster_utils.Cluster`) with the cache on S3 (moto on
  loopback), each node copies an entry once, and a node removed mid-sweep costs only the
  trials it had in flight (slow).
"""
from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

from head2toe.cache import open_cache
from head2toe.cache.store import FeatureCache
from orchestrator.config import load_config
from orchestrator.features import sweep_keys
from orchestrator.plan import cv_specs
from sweep_helpers import finished_cv_runs, runs, trial_status_counts, write_config

METHODS = {
    "linear": {"lr": [0.1], "steps": [40], "coef": [0.0], "target_size": [128]},
    "head2toe": {"lr": [0.1], "steps": [40], "coef": [1.0e-3], "target_size": [128], "keep_fractions": [0.05, 0.2]},
}


@contextmanager
def driver_feature_reads(cache_dir: Path) -> Iterator[list[str]]:
    """Paths of every column-data read of the cache made in this process (`FeatureCache`'s
    whole-file and row-group readers), plus every Python-level open of a file under
    `cache_dir`. Footers (metadata) may be read: they carry no feature bytes."""
    reads: list[str] = []
    originals = {name: getattr(FeatureCache, name) for name in ("_read_file", "_read_group")}

    def counting(name):
        def read(self, path, *args, **kwargs):
            reads.append(f"{name} {path}")
            return originals[name](self, path, *args, **kwargs)
        return read

    root = str(cache_dir.resolve())
    active = [True]

    def audit(event: str, args: tuple) -> None:
        if active[0] and event == "open" and isinstance(args[0], str) and args[0].startswith(root):
            reads.append(f"open {args[0]}")

    sys.addaudithook(audit)  # cannot be removed; `active` switches it off
    for name in originals:
        setattr(FeatureCache, name, counting(name))
    try:
        yield reads
    finally:
        active[0] = False
        for name, fn in originals.items():
            setattr(FeatureCache, name, fn)


def synthetic(n: int = 120, seed: int = 0) -> "LayerFeatures":
    from head2toe.features import LayerFeatures

    rng = np.random.default_rng(seed)
    layers = {"a": rng.normal(size=(n, 24)), "b": rng.normal(size=(n, 8)) * 5, "pre_logits": rng.normal(size=(n, 12))}
    labels = rng.integers(0, 3, n)
    layers["pre_logits"][:, 0] += 2 * labels  # something to learn
    return LayerFeatures({k: v.astype(np.float16) for k, v in layers.items()}, labels)


def test_matrix_built_from_chunks_serves_folds_and_chunked_scoring_exactly():
    """The trial's one float32 matrix (filled chunk by chunk) equals the whole split's; a fold
    trained on its rows gives the heads of a copied fold; test counts summed over chunks give
    the one-chunk accuracy."""
    from head2toe.features import NormalizedFeatures
    from head2toe.methods import METHODS, HParams
    from head2toe.protocol import cv_folds

    feats = synthetic()
    chunks = [feats.rows(slice(a, a + 37)) for a in range(0, len(feats), 37)]
    norm = NormalizedFeatures.from_chunks(chunks, len(feats), feats.widths)
    assert torch.equal(norm.x, feats.matrix()) and np.array_equal(norm.labels, feats.labels)
    kept = {"a": np.array([1, 5, 7]), "b": np.array([], dtype=int), "pre_logits": np.array([0, 3])}
    rows = np.array([3, 9, 40, 41])
    assert torch.allclose(norm.matrix(kept, rows), feats.matrix(kept, rows), atol=1e-6)
    assert torch.equal(feats.matrix(kept, rows), feats.rows(rows).matrix(kept))
    tr, va = cv_folds(len(feats))[1]
    test = synthetic(n=90, seed=1)
    for name in ("linear", "all_l2", "head2toe"):
        method = METHODS[name]
        hps = [HParams(0.1, 30, 1e-3, 16, (0.1, 0.5) if method.needs_keep_fractions else ())]
        on_rows = method.fit(norm, hps, 3, seed=2, rows=tr)
        copied = method.fit(NormalizedFeatures.from_chunks([feats.rows(tr)], len(tr), feats.widths), hps, 3, seed=2)
        assert [h.probe.final_loss for h in on_rows] == [h.probe.final_loss for h in copied]
        whole = method.score(on_rows, test)
        by_chunk = np.sum([method.score(on_rows, test.rows(slice(a, a + 25))) for a in range(0, len(test), 25)], axis=0)
        assert list(by_chunk) == whole and all(0 <= c <= len(test) for c in whole)
    with pytest.raises(ValueError, match="expected 120"):
        NormalizedFeatures.from_chunks(chunks[:-1], len(feats), feats.widths)


def final_accuracies(tracking_uri: str) -> dict[tuple[str, str], float]:
    return {(r.data.params["method"], r.data.params["seed"]): r.data.metrics["test_accuracy"]
            for r in runs(tracking_uri) if r.data.tags.get("h2t.kind") == "trial" and r.data.tags["h2t.stage"] == "final"}


def test_streamed_test_split_matches_the_cached_one_and_the_driver_reads_no_features(local_ray, tmp_path):
    from orchestrator.sweep import run_sweep

    results = {}
    cache = tmp_path / "cache"
    for mode in ("stream", "cache"):  # the cached run finds the train entry warm: planned from footers alone
        cfg = load_config(write_config(tmp_path / f"{mode}.yaml", methods=METHODS, seeds=[0, 1], folds=[0],
                                       cache=str(cache), test_features=mode))
        with driver_feature_reads(cache) as reads:
            res = run_sweep(cfg, tmp_path / f"out-{mode}")
        assert reads == [], f"the driver read feature bytes: {reads[:3]}"
        assert res.counts["cv"] == {"trials": 2, "errors": 0}
        assert res.counts["final"] == {"trials": 1, "errors": 0}  # one final trial: 2 methods x 2 seeds
        # stream: 100 train images extracted + 100 test images in the final trial; cache: the test split extracted
        assert res.counts["forward_passes"] == (200 if mode == "stream" else 100)
        (test_key,) = sweep_keys(cfg, ("test",)).values()
        assert open_cache(str(cache)).contains(test_key, verify_data=False) == (mode == "cache")  # stream stores no test entry
        results[mode] = final_accuracies(res.tracking_uri)
        assert trial_status_counts(runs(res.tracking_uri)) == Counter({("cv", "FINISHED"): 2, ("final", "FINISHED"): 4})
    assert len(results["cache"]) == 4 and results["stream"] == results["cache"]
    assert all(0.5 < acc <= 1 for acc in results["cache"].values())


# -- a local multi-node cluster, the cache on S3 ------------------------------------------------

@pytest.fixture
def s3_cache(monkeypatch):
    """An S3 bucket on moto's server (loopback); credentials in the environment Ray nodes inherit."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(k, v)
    boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1").create_bucket(Bucket="h2t")
    yield f"s3://h2t/features?endpoint_override={host}:{port}&scheme=http&region=us-east-1"
    server.stop()


@pytest.mark.slow
def test_multi_node_sweep_copies_once_per_node_and_survives_a_removed_node(s3_cache, tmp_path, monkeypatch):
    """Three 1-CPU nodes; the cache on S3. Each node that reads an entry copies it once (its
    trials then share the memory-mapped copy); a worker node removed once CV trials are
    finishing costs only the trial it was running: every CV key still finishes exactly once."""
    import ray
    from ray.cluster_utils import Cluster

    from orchestrator.sweep import run_sweep

    if ray.is_initialized():  # an earlier sweep in this process left its local Ray running
        ray.shutdown()
    nodes_dir = tmp_path / "nodes"
    monkeypatch.setenv("H2T_NODE_CACHE", str(nodes_dir))
    fast_failure = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "_system_config": fast_failure})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cfg = load_config(write_config(tmp_path / "multi.yaml", methods=METHODS, seeds=[0], folds=[0, 1, 2, 3, 4],
                                   cache=s3_cache, max_failures=3))
    out = tmp_path / "out"
    removed = threading.Event()

    def remove_when_busy() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and finished_cv_runs(out / "mlflow.db") < 2:
            time.sleep(0.2)
        cluster.remove_node(workers[0], allow_graceful=False)
        removed.set()

    ray.init(address=cluster.address, include_dashboard=False, configure_logging=False)
    thread = threading.Thread(target=remove_when_busy, daemon=True)
    try:
        with driver_feature_reads(nodes_dir) as reads:  # the driver opens no node copy either
            thread.start()
            res = run_sweep(cfg, out)
    finally:
        ray.shutdown()
        cluster.shutdown()
        thread.join(timeout=5)
    assert removed.is_set()
    assert reads == []
    assert res.counts["cv"] == {"trials": 10, "errors": 0} and res.counts["final"]["errors"] == 0
    trials = [r for r in runs(res.tracking_uri) if r.data.tags.get("h2t.kind") == "trial"]
    finished = Counter(r.data.tags["h2t.trial_key"] for r in trials if r.info.status == "FINISHED")
    expected = {k for s in cv_specs(cfg) for k in s.keys()}
    assert expected <= set(finished) and all(finished[k] == 1 for k in expected)
    failed = [r for r in trials if r.info.status == "FAILED"]
    assert len(failed) <= 1  # at most the trial the removed 1-CPU node had in flight (one hp: one run)
    logs = sorted(nodes_dir.glob("*/*/copies.log"))
    copies = {log.parent.parent.name: Counter(line.split()[0] for line in log.read_text().splitlines()) for log in logs}
    assert len(copies) >= 2, copies  # several nodes read the entry, each from its own copy
    assert all(n == 1 for per_node in copies.values() for n in per_node.values()), copies  # once per node
    (train_key,) = sweep_keys(cfg, ("train",)).values()
    assert all(set(per_node) == {train_key} for per_node in copies.values())
    assert not os.environ.get("H2T_NODE_COPY")  # the default policy: remote storage is copied
