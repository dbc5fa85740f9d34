"""Sweep memory vs test-split size: the same sweep at N and 8N test images, measured in one run.

An imagefolder task is generated on the fly (small PNGs, 4 classes, 400 train images);
Lite0 at 64 px with T=8192 makes rows wide (~0.6 MB of float16 each). Each size runs
`h2t sweep` in a fresh process (its own local Ray) while a thread polls the RSS of that
process (the driver) and of every Ray worker under it, and Ray's object-store usage.
Goal: every memory ratio (8N / N) <= 1.25 and the wall-time ratio <= 8.5.

    .venv/bin/python benchmarks/bench_scale.py                       # N=250, the config default mode
    .venv/bin/python benchmarks/bench_scale.py --n 1000 --modes cache,stream
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
CLASSES, TRAIN, SIZE = 4, 400, 32


def make_task(root: Path, n_test: int, seed: int = 0) -> Path:
    """PATH/{train,test}/<class>/*.png: each class a colour with a bar at its own position, plus noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", TRAIN), ("test", n_test)):
        for i in range(n):
            c = i % CLASSES
            img = rng.integers(0, 80, (SIZE, SIZE, 3), dtype=np.uint8)
            img[..., c % 3] += 100
            img[c * 8:(c + 1) * 8] = 230
            d = root / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i:06d}.png")
    return root


def sweep_config(task: Path, cache: Path, mode: str, target_size: int) -> dict:
    return {
        "name": "bench-scale", "experiment": "h2t-bench-scale", "tasks": [f"imagefolder:{task}"],
        "backbones": [{"name": "efficientnet_lite0", "input_size": 64}],
        "methods": {"linear": {"lr": [0.1], "steps": [100], "target_size": [target_size]},
                    "head2toe": {"lr": [0.1], "steps": [100], "coef": [1.0e-4], "target_size": [target_size], "keep_fractions": [0.05]}},
        "seeds": [0], "folds": [0], "cache": str(cache), "test_features": mode,
    }


def child(config: Path, out: Path) -> dict:
    """Runs in the measured process: the sweep, with a poller thread; prints one JSON line."""
    import ray

    from orchestrator.config import load_config
    from orchestrator.sweep import run_sweep

    me, stop = psutil.Process(), threading.Event()
    peak = {"driver_rss": 0, "worker_rss": 0, "object_store": 0}
    kinds: dict[str, int] = {}  # peak RSS per Ray process title (trial, extraction task, agents)

    def poll() -> None:
        last_store = 0.0
        while not stop.is_set():
            peak["driver_rss"] = max(peak["driver_rss"], me.memory_info().rss)
            for p in me.children(recursive=True):
                try:
                    title = p.cmdline()[0] if p.cmdline() else ""
                    if title.startswith("ray::"):
                        rss = p.memory_info().rss
                        peak["worker_rss"] = max(peak["worker_rss"], rss)
                        kinds[title] = max(kinds.get(title, 0), rss)
                except psutil.Error:
                    continue
            if ray.is_initialized() and time.time() - last_store > 1.0:
                last_store = time.time()
                try:
                    from ray._private.internal_api import memory_summary

                    m = re.search(r"Plasma memory usage (\d+) MiB", memory_summary(stats_only=True))
                    if m:
                        peak["object_store"] = max(peak["object_store"], int(m.group(1)) << 20)
                except Exception:  # noqa: BLE001 - the store answers only once Ray is up
                    pass
            time.sleep(0.05)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    start = time.perf_counter()
    res = run_sweep(load_config(config), out)
    wall = time.perf_counter() - start
    stop.set()
    thread.join()
    ray.shutdown()
    top = sorted(kinds.items(), key=lambda kv: -kv[1])[:4]
    return {**peak, "by_kind_mib": {k: round(v / 2**20) for k, v in top}, "wall_s": round(wall, 1), "forward_passes": res.counts["forward_passes"],
            "errors": res.counts["cv"]["errors"] + res.counts["final"]["errors"], "summary": res.summary.to_string()}


def measure(work: Path, n: int, mode: str, target_size: int) -> dict:
    task = make_task(work / f"task-{n}", n)
    cache = work / f"cache-{n}-{mode}"
    cfg = work / f"sweep-{n}-{mode}.yaml"
    cfg.write_text(yaml.safe_dump(sweep_config(task, cache, mode, target_size)))
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, __file__, "--child", str(cfg), str(work / f"out-{n}-{mode}")],
                          capture_output=True, text=True, env=env, cwd=REPO)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{\"driver_rss\"")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"sweep at N={n} ({mode}) failed:\n{proc.stderr[-3000:]}")
    out = json.loads(lines[-1])
    out["cache_bytes"] = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
    shutil.rmtree(cache, ignore_errors=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=250, help="test images of the small size (the large one is 8x)")
    p.add_argument("--modes", default="", help="test_features modes, comma-separated (default: the config default)")
    p.add_argument("--target-size", type=int, default=8192)
    p.add_argument("--child", nargs=2, metavar=("CONFIG", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child[0]), Path(args.child[1]))), flush=True)
        return
    from orchestrator.config import SweepConfig

    modes = [m for m in args.modes.split(",") if m] or [SweepConfig.model_fields["test_features"].default]
    work = Path(tempfile.mkdtemp(prefix="h2t-bench-scale-"))
    report: dict = {"n": args.n, "target_size": args.target_size, "train": TRAIN, "cpus": os.cpu_count()}
    try:
        for mode in modes:
            small, large = measure(work, args.n, mode, args.target_size), measure(work, 8 * args.n, mode, args.target_size)
            ratios = {k: round(large[k] / max(1, small[k]), 3) for k in ("driver_rss", "worker_rss", "object_store", "wall_s", "cache_bytes")}
            ok = all(ratios[k] <= 1.25 for k in ("driver_rss", "worker_rss", "object_store") if small[k] > (32 << 20)) and ratios["wall_s"] <= 8.5
            mib = {k: round(v / 2**20, 1) for k, v in small.items() if k in ("driver_rss", "worker_rss", "object_store", "cache_bytes")}
            mib8 = {k: round(v / 2**20, 1) for k, v in large.items() if k in ("driver_rss", "worker_rss", "object_store", "cache_bytes")}
            keep = ("wall_s", "forward_passes", "by_kind_mib")
            report[mode] = {f"N={args.n}": {**mib, **{k: small[k] for k in keep}},
                            f"N={8 * args.n}": {**mib8, **{k: large[k] for k in keep}},
                            "ratios": ratios, "goal_met": ok}
            print(json.dumps({mode: report[mode]}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
