"""Tune overhead share of a sweep: 1 - (trial compute) / (stage wall time x trial slots).

Trial compute is what trials spent inside the method (MLflow `wall_time_s`, summed over a
stage's trial runs); the rest of the slot time is Ray/Tune scheduling, actor start-up,
object transfer, MLflow logging and slots left idle at a stage's end. `startup_s`: from the
stage's start to its first trial running (Tuner set-up, worker start, the trainable's
imports). Goal: <= 10 % on the demo sweep. On a shared machine compare runs made side by
side: trial compute inflates with the load as much as the overhead does.

    .venv/bin/python benchmarks/bench_sweep.py                      # runs configs/demo.yaml into out/bench-sweep
    .venv/bin/python benchmarks/bench_sweep.py --tracking-uri sqlite:///out/demo/mlflow.db --experiment h2t-demo
    .venv/bin/python benchmarks/bench_sweep.py --event-loop   # the MLflow callback's cost on Tune's loop, per trial
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from mlflow.tracking import MlflowClient


def overhead(tracking_uri: str, experiment: str, slots: float) -> dict:
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=50000)
    sweeps = sorted((r for r in runs if r.data.tags.get("h2t.kind") == "sweep"), key=lambda r: r.info.start_time)
    sweep_id = sweeps[-1].data.tags["h2t.sweep_id"]
    out = {"sweep_id": sweep_id, "slots": slots}
    total_wall = total_compute = 0.0
    for stage in ("cv", "final"):
        stage_runs = [r for r in runs if r.data.tags.get("h2t.sweep_id") == sweep_id and r.data.tags.get("h2t.stage") == stage]
        parent = [r for r in stage_runs if r.data.tags["h2t.kind"] == "stage"]
        trials = [r for r in stage_runs if r.data.tags["h2t.kind"] == "trial" and r.info.status == "FINISHED"]
        if not parent or not trials or parent[0].info.end_time is None:
            continue
        wall = (parent[0].info.end_time - parent[0].info.start_time) / 1000
        compute = sum(r.data.metrics.get("wall_time_s", 0.0) for r in trials)
        startup = (min(r.info.start_time for r in trials) - parent[0].info.start_time) / 1000  # stage start -> first trial running
        out[stage] = {"wall_s": round(wall, 1), "trial_compute_s": round(compute, 1), "runs": len(trials),
                      "startup_s": round(startup, 1), "startup_share": round(startup / wall, 3),
                      "overhead_share": round(1 - compute / (wall * slots), 3)}
        total_wall += wall
        total_compute += compute
    out["overhead_share"] = round(1 - total_compute / (total_wall * slots), 3) if total_wall else None
    out["goal"] = 0.10
    return out


def event_loop(n_trials: int = 20) -> dict:
    """Seconds of Tune's event loop per CV trial (2 runs: open at start, close at result) that
    the MLflow callback takes, against a real SQLite store: sending each write on the loop (as
    before the sender thread) vs queueing it for the sender. And seconds a fresh worker takes
    to import the trainable once torch and Ray Tune are loaded (MLflow no longer among them)."""
    import subprocess
    import sys
    import tempfile
    from types import SimpleNamespace

    from head2toe.methods import HParams
    from orchestrator.config import BackboneConfig
    from orchestrator.plan import FeatureTrial, FoldTrial
    from orchestrator.tracking import Tracker
    from orchestrator.tune_logging import MlflowTrialLogger

    root = Path(tempfile.mkdtemp(prefix="h2t-bench-loop-"))
    hps = (HParams(0.1, 200, 1e-4, 512, (0.01, 0.05)), HParams(0.1, 200, 1e-3, 512, (0.01, 0.05)))
    trials = [FoldTrial(FeatureTrial("cv", "faces", BackboneConfig(name="efficientnet_lite0"), "head2toe", 0, i % 5, hps), "k", 16)
              for i in range(n_trials)]
    metrics = {"val_accuracy": 0.5, "train_loss": 0.1, "n_features_total": 28296, "wall_time_s": 1.0, "forward_passes": 0}
    out = {}
    for mode in ("on_loop", "queued"):
        tracker = Tracker(f"sqlite:///{root / mode}.db", "bench", (root / mode).as_uri())
        logger = MlflowTrialLogger(tracker, "s", tracker.raw.create_run(tracker.experiment_id).info.run_id, {}, trials)
        if mode == "on_loop":  # what the callback did before: every write sent where it is made
            logger._send = lambda ops, lg=logger: [tracker.apply(op, lg.ids) for op in ops]
        loop = 0.0
        start = time.perf_counter()
        for i, t in enumerate(trials):
            trial = SimpleNamespace(trial_id=str(i), config={"trial": i}, error_file=None)
            rows = [{"key": k, "params": p, "cache_key": "k", "metrics": metrics} for k, p in t.spec.runs()]
            a = time.perf_counter()
            logger.on_trial_start(0, [], trial)
            logger.on_trial_result(0, [], trial, {"rows": rows})
            loop += time.perf_counter() - a
        logger.on_experiment_end([])
        out[mode] = {"loop_s_per_trial": round(loop / n_trials, 4), "all_sent_s": round(time.perf_counter() - start, 2)}
    code = ("import time, ray.tune, torch; t = time.perf_counter(); import orchestrator.trainable, sys; "
            "print(round(time.perf_counter() - t, 2), 'mlflow' in sys.modules)")
    took, mlflow = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    out["worker_trainable_import_s"], out["worker_imports_mlflow"] = float(took), mlflow == "True"
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracking-uri", default=None, help="read an existing sweep instead of running the demo")
    p.add_argument("--experiment", default="h2t-demo")
    p.add_argument("--out", default="out/bench-sweep")
    p.add_argument("--config", default=None, help="sweep YAML to run (default configs/demo.yaml)")
    p.add_argument("--slots", type=float, default=None, help="concurrent trials (default: CPUs / trial CPUs)")
    p.add_argument("--event-loop", action="store_true", help="only time the MLflow callback on Tune's loop and the worker import")
    args = p.parse_args()
    if args.event_loop:
        print(json.dumps({"event_loop": event_loop()}, indent=1))
        return
    slots = args.slots or float(os.cpu_count() or 1)
    uri = args.tracking_uri
    if uri is None:
        from orchestrator.config import load_config
        from orchestrator.sweep import run_sweep

        config = Path(args.config or Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
        res = run_sweep(load_config(config), Path(args.out), resume=False, config_text=config.read_text())
        uri = res.tracking_uri
    print(json.dumps({"tune_overhead": overhead(uri, args.experiment, slots)}, indent=1))


if __name__ == "__main__":
    main()
