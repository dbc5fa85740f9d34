"""Core speed ratios, each measured within one run (these machines are noisy):

1. extraction with every tap + pooling vs a plain forward            (goal >= 0.85)
2. K probe configurations trained together vs one by one              (goal >= 1.3x)
3. backbone forward with the chosen allocator vs glibc's default      (goal >= 2.5x)

Run: `make bench` or `.venv/bin/python benchmarks/bench_core.py [--quick]`.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch


def forward_rate(backbone: str, size: int, batch: int, iters: int, taps: bool) -> float:
    from head2toe.backbones import create_backbone
    from head2toe.pooling import pool_to_target

    b = create_backbone(backbone, weights="random" if backbone != "efficientnet_lite0" else "pretrained", input_size=size)
    x = torch.randn(batch, 3, size, size)
    with torch.inference_mode():
        def step():
            if taps:
                for a in b.forward_taps(x).values():
                    pool_to_target(a.float(), 1024).to(torch.float16).numpy()  # as head2toe.extract does
            else:
                b.model(x)
        step()  # warm-up
        start = time.perf_counter()
        for _ in range(iters):
            step()
        return batch * iters / (time.perf_counter() - start)


def bench_taps(args) -> dict:
    plain = forward_rate(args.backbone, args.size, args.batch, args.iters, taps=False)
    tapped = forward_rate(args.backbone, args.size, args.batch, args.iters, taps=True)
    return {"plain_img_s": round(plain, 1), "taps_pool_img_s": round(tapped, 1), "ratio": round(tapped / plain, 3), "goal": 0.85}


def bench_probes(args) -> dict:
    from head2toe.probe import ProbeConfig, train_probes

    torch.manual_seed(0)
    x, y = torch.randn(800, args.features), torch.randint(0, 16, (800,))
    configs = [ProbeConfig(lr, args.steps, "group", coef) for lr in (0.1, 0.01) for coef in (1e-4, 1e-3)] * (args.heads // 4)
    train_probes(x, y, 16, configs[:1], device="cpu")  # warm-up
    start = time.perf_counter()
    train_probes(x, y, 16, configs, device="cpu")
    together = time.perf_counter() - start
    start = time.perf_counter()
    for c in configs:
        train_probes(x, y, 16, [c], device="cpu")
    alone = time.perf_counter() - start
    return {"heads": len(configs), "features": args.features, "together_s": round(together, 2), "one_by_one_s": round(alone, 2),
            "speedup": round(alone / together, 2), "goal": 1.3}


def bench_allocator(args) -> dict:
    from head2toe.allocator import allocator_env

    code = (f"import torch; torch.set_num_threads({args.threads}); from benchmarks.bench_core import forward_rate; "
            f"print(forward_rate('{args.backbone}', 224, 32, {args.iters}, taps=False))")
    rates = {}
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF", "GLIBC_TUNABLES", "H2T_ALLOCATOR")}
    for kind in ("default", "hugetlb", "jemalloc"):
        env = {**base, **allocator_env(kind), "PYTHONPATH": os.getcwd()}
        if env.get("H2T_ALLOCATOR") != kind:
            continue  # not available here
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        rates[kind] = round(float(out.stdout.strip().splitlines()[-1]), 1)
    best = max(rates, key=rates.get)
    return {"img_s_224px": rates, "best": best, "speedup_vs_default": round(rates[best] / rates["default"], 2), "goal": 2.5}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--iters", type=int, default=4)
    p.add_argument("--features", type=int, default=28296)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--only", choices=["taps", "probes", "allocator"], default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    benches = {"taps": bench_taps, "probes": bench_probes, "allocator": bench_allocator}
    for name, fn in benches.items():
        if args.only in (None, name):
            print(json.dumps({name: fn(args)}), flush=True)


if __name__ == "__main__":
    main()
