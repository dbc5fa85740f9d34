"""`make demo`'s wall time, stage by stage, from an empty feature cache (goal: under 300 s on
2 cores once .venv exists).

Runs `h2t demo` as a user would (a fresh process, a fresh output folder and cache under a
temporary directory), then reads the stage runs the sweep logged to MLflow:

    start-up (process, config)  Ray and between stages  extract  cv  final  report  = total

    .venv/bin/python -m head2toe.allocator -- .venv/bin/python benchmarks/bench_demo.py
    .venv/bin/python benchmarks/bench_demo.py --keep out/bench-demo   # keep the run to open in the UI
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 300.0


def stage_times(tracking_uri: str, experiment: str) -> dict[str, float]:
    """Seconds per stage of the newest sweep, from its MLflow stage runs' start and end times,
    plus when the sweep run started and ended (epoch ms)."""
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=50000)
    sweep = max((r for r in runs if r.data.tags.get("h2t.kind") == "sweep"), key=lambda r: r.info.start_time)
    sweep_id = sweep.data.tags["h2t.sweep_id"]
    out: dict[str, float] = {"sweep_start_ms": sweep.info.start_time, "sweep_end_ms": sweep.info.end_time or 0}
    for r in runs:
        if r.data.tags.get("h2t.sweep_id") == sweep_id and r.data.tags.get("h2t.kind") == "stage" and r.info.end_time:
            out[r.data.tags["h2t.stage"]] = (r.info.end_time - r.info.start_time) / 1000
    return out


def run_demo(out: Path, cache: Path) -> tuple[float, float, str]:
    """(wall seconds, epoch seconds at launch, stdout) of one `h2t demo`."""
    env = {**os.environ, "H2T_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    h2t = Path(sys.executable).parent / "h2t"
    cmd = [str(h2t), "demo", "--out", str(out), "--cache", str(cache)]
    launched = time.time()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"h2t demo exited {proc.returncode}")
    return wall, launched, proc.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keep", default=None, help="write the run here (kept) instead of a temporary folder")
    p.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    args = p.parse_args()
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="h2t-bench-demo-"))
    if args.keep and base.exists():
        shutil.rmtree(base)
    out, cache = base / "demo", base / "cache"
    try:
        wall, launched, stdout = run_demo(out, cache)
        times = stage_times(f"sqlite:///{(out / 'mlflow.db').resolve()}", "h2t-demo")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    startup = times["sweep_start_ms"] / 1000 - launched
    stages = {s: round(times.get(s, 0.0), 1) for s in ("extract", "cv", "final")}
    sweep_s = (times["sweep_end_ms"] - times["sweep_start_ms"]) / 1000
    between = sweep_s - sum(stages.values())  # Ray start-up, entry checks, best-config selection
    report = wall - startup - sweep_s
    row = {"startup_s": round(startup, 1), "ray_and_between_stages_s": round(between, 1),
           **{f"{k}_s": v for k, v in stages.items()},
           "report_s": round(report, 1), "total_s": round(wall, 1), "goal_s": GOAL_S,
           "cpus": os.cpu_count(), "commit": _commit()}
    if args.json:
        print(json.dumps(row))
        return
    print(stdout.strip().splitlines()[-1])
    width = max(map(len, row))
    for k, v in row.items():
        print(f"{k:<{width}}  {v}")
    print("under goal" if wall <= GOAL_S else f"OVER the {GOAL_S:.0f} s goal by {wall - GOAL_S:.0f} s")


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


if __name__ == "__main__":
    main()
