"""Extraction throughput on CPU, lever by lever: EfficientNet-Lite0 at 224 px (the demo's
backbone, pretrained) over the demo's 64 px images, every tap pooled to target size 512 and
cast to float16 as `head2toe.extract.iter_features` does. Each lever's rate is divided by
the baseline's from the same round; the machine is shared, so compare ratios, and prefer
img per CPU-second (the work done) to img/s (which also counts waiting for a core).

    cd REPO && PYTHONPATH=$PWD H2T_NO_REEXEC=1 .venv/bin/python -m head2toe.allocator -- \\
        .venv/bin/python benchmarks/bench_extract.py [--images 96] [--rounds 3] [--worker-rounds 1] [--compile]
    ... benchmarks/bench_extract.py --stage configs/demo.yaml   # the sweep's extraction stage alone

Sections:
  per process, 1 thread (as in a 1-CPU Ray worker): baseline = contiguous NCHW, batch 32,
    inference_mode, fp32, every tap held until the forward ends (the path before this
    benchmark); no_grad instead of inference_mode; channels_last; pooling inside the tap
    hooks (the library path now); batch 16/48/96; bf16 autocast; where the time goes
    (decode+resize+normalise / forward / pooling).
  workers x threads on 2 cores: 1 process x 2 threads vs 2 processes x 1 thread.
  torch.compile (--compile, ~3 min): compile seconds, steady img/s, images to earn it back.
  fidelity: per lever, ||u - u_base|| of the unit-normalised pooled features u of each
    example and tap vs the baseline: the worst tap's max over examples, the median tap's.
  per Ray task: create_backbone + feature_info (what a task pays before its first image
    unless its worker kept the backbone).
"""
from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from head2toe.backbones import create_backbone  # noqa: E402
from head2toe.extract import prepare_for_inference  # noqa: E402
from head2toe.pooling import pool_to_target  # noqa: E402
from head2toe.preprocess import to_input  # noqa: E402
from head2toe.tasks import get_task  # noqa: E402

TARGET = 512
TASK = "synth_dsprites_loc"  # 64 px images, upsampled to 224 like the demo's


def demo_images(n: int) -> np.ndarray:
    return np.asarray(get_task(TASK).load("train").images[:n])


def one_pass(backbone, images, batch_size=32, channels_last=False, grad="inference", precision="fp32", timings=None):
    """The extraction loop as it was before this benchmark (every tap's activation held until
    the forward ends, then pooled), with each lever exposed; returns {tap: float32 features}
    and adds seconds per phase to `timings` (preprocess, forward, pool)."""
    prepare_for_inference(backbone, channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    ctx = torch.inference_mode if grad == "inference" else torch.no_grad
    spec = backbone.spec
    out: dict[str, list[np.ndarray]] = {}
    t = timings if timings is not None else {}
    for start in range(0, len(images), batch_size):
        t0 = time.perf_counter()
        with ctx():
            x = to_input(images[start:start + batch_size], backbone.input_size, spec.mean, spec.std).to(memory_format=fmt)
            t1 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext():
                acts = backbone.forward_taps(x)
            t2 = time.perf_counter()
            for name, act in acts.items():
                out.setdefault(name, []).append(pool_to_target(act.float(), TARGET).to(torch.float16).numpy())
            t3 = time.perf_counter()
        for k, dt in (("preprocess", t1 - t0), ("forward", t2 - t1), ("pool", t3 - t2)):
            t[k] = t.get(k, 0.0) + dt
    return {k: np.concatenate(v).astype(np.float32) for k, v in out.items()}


def library_pass(backbone, images, batch_size=32, channels_last=True, precision=None, timings=None):
    """`iter_features` itself (pooling inside the tap hooks), features as float32."""
    from head2toe.extract import iter_features
    from head2toe.tasks.base import ImageSplit

    out: dict[str, list[np.ndarray]] = {}
    data = ImageSplit(images, np.zeros(len(images), dtype=np.int64))
    for batch in iter_features(backbone, data, [TARGET], batch_size, channels_last=channels_last, precision=precision):
        for name, block in batch[TARGET].layers.items():
            out.setdefault(name, []).append(block)
    return {k: np.concatenate(v).astype(np.float32) for k, v in out.items()}


def rate(backbone, images, lever: dict) -> tuple[float, float, dict, dict]:
    """(img/s of wall time, img per CPU-second of this process) of one pass after a warm-up at
    each batch shape, phase seconds, features. On a shared machine the CPU rate is the steady
    one: it counts the work, not the wait for a core."""
    lever = dict(lever)
    run = library_pass if lever.pop("library", False) else one_pass
    bs = lever.get("batch_size", 32)
    run(backbone, images[:bs], **lever)  # warm-up: oneDNN primitives for this shape and layout
    if len(images) % bs:
        run(backbone, images[: len(images) % bs], **lever)
    timings: dict[str, float] = {}
    t0, c0 = time.perf_counter(), time.process_time()
    feats = run(backbone, images, timings=timings, **lever)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return len(images) / wall, len(images) / cpu, timings, feats


def rel_errors(a: dict, b: dict) -> dict[str, float]:
    """Per tap: largest ||a - b|| over examples of the unit-normalised (per example) features."""
    out = {}
    for k in a:
        x, y = a[k], b[k]
        nx = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        ny = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
        out[k] = float(np.max(np.linalg.norm(nx - ny, axis=1)))
    return out


BASELINE = "baseline (NCHW, bs32, inference_mode, fp32)"
LEVERS = {
    BASELINE: {},  # the extraction loop before this benchmark: every tap held, pooled after the forward
    "no_grad instead of inference_mode": {"grad": "no_grad"},
    "channels_last": {"channels_last": True},
    "pool in the tap hooks (NCHW)": {"library": True, "channels_last": False},
    "library: channels_last + pool in hooks, bs32": {"library": True},
    "library, bs16": {"library": True, "batch_size": 16},
    "library, bs48": {"library": True, "batch_size": 48},
    "library, bs96": {"library": True, "batch_size": 96},
    "bf16 autocast (NCHW)": {"precision": "bf16"},
    "library, bf16 autocast": {"library": True, "precision": "bf16"},
}


def per_process(images: np.ndarray, rounds: int) -> None:
    torch.set_num_threads(1)
    backbone = create_backbone("efficientnet_lite0")
    names = list(LEVERS)
    walls = {k: [] for k in LEVERS}
    cpus = {k: [] for k in LEVERS}
    phases: dict[str, dict] = {}
    feats: dict[str, dict] = {}
    for r in range(rounds):
        shift = r * 3 % len(names)
        for name in names[shift:] + names[:shift]:  # rotated, the baseline too: no lever always first or last
            wall, cpu, t, f = rate(backbone, images, LEVERS[name])
            walls[name].append(wall)
            cpus[name].append(cpu)
            phases[name] = t
            feats.setdefault(name, f)
        print(f"  round {r + 1}/{rounds}: baseline {walls[BASELINE][-1]:.1f} img/s, load {os.getloadavg()[0]:.1f}", flush=True)
    ref = feats[BASELINE]
    med = statistics.median
    print(f"\nper process, 1 thread, {len(images)} images of {TASK} at 224 px, T={TARGET}; medians over {rounds} rounds "
          "of each lever's rate / the baseline's in the same round")
    print(f"{'lever':46s} {'img/cpu-s':>9s} {'x base':>6s} {'img/s':>6s} {'x base':>6s}  {'pre/fwd/pool %':>14s}  "
          "rel err: max (tap), median tap")
    for name in LEVERS:
        t = phases.get(name, {})
        tot = sum(t.values())
        split = "/".join(f"{100 * t[k] / tot:.0f}" for k in ("preprocess", "forward", "pool")) if tot else "-"
        err = rel_errors(ref, feats[name])
        worst = max(err, key=err.get)
        cpu_x = med(c / b for c, b in zip(cpus[name], cpus[BASELINE]))
        wall_x = med(w / b for w, b in zip(walls[name], walls[BASELINE]))
        print(f"{name:46s} {med(cpus[name]):9.1f} {cpu_x:6.2f} {med(walls[name]):6.1f} {wall_x:6.2f}  {split:>14s}  "
              f"{err[worst]:.1e} ({worst}), {med(err.values()):.1e}")


def _worker(args) -> tuple[int, float, float]:
    images, threads, barrier = args
    torch.set_num_threads(threads)
    backbone = create_backbone("efficientnet_lite0")
    library_pass(backbone, images[:32])  # warm-up
    barrier.wait()
    t0, c0 = time.perf_counter(), time.process_time()
    library_pass(backbone, images)
    return len(images), time.perf_counter() - t0, time.process_time() - c0


def parallel(images: np.ndarray, procs: int, threads: int) -> tuple[float, float]:
    """(aggregate img/s, img per CPU-second summed over processes) of `procs` processes x
    `threads` threads splitting `images` evenly, on the library path."""
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(procs)
        with ctx.Pool(procs) as pool:
            done = pool.map(_worker, [(part, threads, barrier) for part in np.array_split(images, procs)])
    n = sum(d[0] for d in done)
    return n / max(d[1] for d in done), n / sum(d[2] for d in done)


def workers_vs_threads(images: np.ndarray, rounds: int) -> None:
    setups = {"1 process x 1 thread": (1, 1), "1 process x 2 threads": (1, 2), "2 processes x 1 thread": (2, 1)}
    res = {k: [] for k in setups}
    for _ in range(rounds):
        for name, (p, t) in setups.items():
            res[name].append(parallel(images, p, t))
    med = statistics.median
    base = res["1 process x 1 thread"]
    print(f"\nworkers x threads on {os.cpu_count()} cores (library path, bs32); medians over {rounds} rounds, x = vs 1x1 "
          "in the same round (img/cpu-s counts spinning threads too)")
    for name, v in res.items():
        print(f"{name:46s} img/s {med(w for w, _ in v):6.1f} (x {med(w / b[0] for (w, _), b in zip(v, base)):.2f})   "
              f"img/cpu-s {med(c for _, c in v):6.1f} (x {med(c / b[1] for (_, c), b in zip(v, base)):.2f})")


def compiled(images: np.ndarray) -> None:
    torch.set_num_threads(1)
    backbone = create_backbone("efficientnet_lite0")
    eager, _, _, ref = rate(backbone, images, {"library": True})
    backbone.model.forward_features = torch.compile(backbone.model.forward_features)
    t0 = time.perf_counter()
    library_pass(backbone, images[:32])
    compile_s = time.perf_counter() - t0
    ips, _, _, f = rate(backbone, images, {"library": True})  # a split's last, smaller batch recompiles too
    gain = 1 / eager - 1 / ips
    even = f"{compile_s / gain:,.0f} images to earn it back" if gain > 0 else "never earns it back"
    print(f"\ntorch.compile (inductor, forward_features, 1 thread, library path): compile {compile_s:.1f} s; "
          f"eager {eager:.1f} img/s, compiled {ips:.1f} img/s (x {ips / eager:.2f}); {even}; "
          f"max rel err {max(rel_errors(ref, f).values()):.1e}")


def _peak_rss(args) -> float:
    images, library, batch_size = args
    torch.set_num_threads(1)
    backbone = create_backbone("efficientnet_lite0")
    (library_pass if library else one_pass)(backbone, images, batch_size=batch_size, channels_last=True)
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a spawned child would report its parent's peak
    hwm = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM"))
    return int(hwm.split()[1]) / 1024  # MiB


def peak_memory(images: np.ndarray, batch_sizes=(32, 96)) -> None:
    """Peak RSS of a fresh process running one pass: every tap held until the forward ends vs
    pooled inside the hooks (both channels_last)."""
    ctx = mp.get_context("spawn")
    print("\npeak RSS of one pass in a fresh process (channels_last, 1 thread)")
    for bs in batch_sizes:
        with ctx.Pool(1) as pool:
            held = pool.map(_peak_rss, [(images[:bs], False, bs)])[0]
        with ctx.Pool(1) as pool:
            hooked = pool.map(_peak_rss, [(images[:bs], True, bs)])[0]
        print(f"  batch {bs:3d}: taps held {held:6.0f} MiB, pooled in hooks {hooked:6.0f} MiB")


def task_overhead() -> None:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    backbone = create_backbone("efficientnet_lite0")
    t1 = time.perf_counter()
    backbone.feature_info()
    t2 = time.perf_counter()
    print(f"\nper Ray task without a kept backbone: create_backbone {t1 - t0:.2f} s + feature_info {t2 - t1:.2f} s")


def stage(config: str) -> None:
    """A sweep's extraction stage alone (Ray tasks, as `h2t sweep` runs it) into a fresh
    temporary cache: wall seconds and CPU seconds of this process and its Ray processes."""
    import tempfile

    import psutil
    import ray

    from orchestrator.config import load_config
    from orchestrator.extraction import extract_for_sweep

    with tempfile.TemporaryDirectory() as cache:
        cfg = load_config(config, cache=cache)
        t0 = time.perf_counter()
        summary = extract_for_sweep(cfg, report=lambda _: None)
        wall = time.perf_counter() - t0
        me = psutil.Process()
        cpu = sum(sum(c.cpu_times()[:2]) for c in me.children(recursive=True) if c.is_running()) + sum(me.cpu_times()[:2])
        ray.shutdown()
    print(f"extraction stage of {config}: {wall:.1f} s wall (with ray.init), {cpu:.1f} CPU s (driver + live Ray "
          f"processes), {summary.forward_passes} images in {summary.launched} Ray tasks, load {os.getloadavg()[0]:.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=96)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--worker-rounds", type=int, default=1, help="rounds of the workers x threads section (each spawns processes)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (~3 min of compiling on 1 core)")
    p.add_argument("--stage", metavar="CONFIG", help="only time CONFIG's extraction stage (e.g. configs/demo.yaml)")
    args = p.parse_args()
    if args.stage:
        return stage(args.stage)
    print(f"torch {torch.__version__}, allocator {os.environ.get('H2T_ALLOCATOR', 'default')}, "
          f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    images = demo_images(args.images)
    task_overhead()
    per_process(images, args.rounds)
    workers_vs_threads(images, args.worker_rounds)
    peak_memory(images)
    if args.compile:
        compiled(images)


if __name__ == "__main__":
    main()
