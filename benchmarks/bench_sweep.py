"""Tune overhead share of a sweep: 1 - (trial compute) / (stage wall time x trial slots).

Trial compute is what trials spent inside the method (MLflow `wall_time_s`, summed over a
stage's trial runs); the rest of the slot time is Ray/Tune scheduling, actor start-up,
object transfer, MLflow logging and slots left idle at a stage's end. `startup_s`: from the
stage's start to its first trial running (Tuner set-up, worker start, the trainable's
imports). Goal: <= 10 % on the demo sweep. On a shared machine compare runs made side by
side: trial compute inflates with the load as much as the overhead does.

    .venv/bin/python benchmarks/bench_sweep.py                      # runs configs/demo.yaml into out/bench-sweep
    .venv/bin/python benchmarks/bench_sweep.py --tracking-uri sqlite:///out/demo/mlflow.db --experiment h2t-demo
"""
from __future__ import annotations

import argparse
import json
import os
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracking-uri", default=None, help="read an existing sweep instead of running the demo")
    p.add_argument("--experiment", default="h2t-demo")
    p.add_argument("--out", default="out/bench-sweep")
    p.add_argument("--config", default=None, help="sweep YAML to run (default configs/demo.yaml)")
    p.add_argument("--slots", type=float, default=None, help="concurrent trials (default: CPUs / trial CPUs)")
    args = p.parse_args()
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
