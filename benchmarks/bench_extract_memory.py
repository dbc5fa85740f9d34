"""Peak memory of an extraction worker vs the split size: streamed (`fill_split`, what the
Ray extraction tasks run) against collecting the split in memory (`extract_features`).

Each measurement is a fresh process (peak RSS from getrusage) extracting a synthetic split of
N and then 4N rows through a random-init EfficientNet-Lite0 at a target size that makes rows
wide; images are generated per row on demand (lazy, like VTAB and imagefolder splits), so
only the features could make memory grow. Goal: streamed peak at 4N / at N <= 1.25.

Run: `.venv/bin/python -m head2toe.allocator -- .venv/bin/python benchmarks/bench_extract_memory.py [--rows 500]`.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence

import numpy as np

CHILD = "child"


class LazyRandomImages(Sequence):
    """Image i is a deterministic random picture, made when asked for."""

    def __init__(self, n: int, size: int):
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        return np.random.default_rng(int(i)).integers(0, 256, (self.size, self.size, 3), dtype=np.uint8)


def synthetic_task(rows: int, size: int):
    from head2toe.tasks.base import ImageSplit, Task

    class Synthetic(Task):
        name, num_classes = f"synthetic-{rows}", 10

        def split_sizes(self) -> dict[str, int]:
            return {"train": rows, "test": rows}

        def load(self, split: str) -> ImageSplit:
            return ImageSplit(LazyRandomImages(rows, size), np.arange(rows) % 10)

    return Synthetic()


def child(mode: str, rows: int, args) -> dict:
    import resource
    import time

    from head2toe.backbones import create_backbone
    from head2toe.cache import feature_key, fill_split, open_cache
    from head2toe.extract import extract_features

    backbone = create_backbone("efficientnet_lite0", weights="random", input_size=args.size)
    task = synthetic_task(rows, args.size)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="h2t-bench-mem-") as tmp:
        cache = open_cache(tmp, row_group_bytes=args.row_group_mib << 20)
        if mode == "stream":
            fill_split(cache, backbone, task, "train", [args.target_size], batch_size=args.batch, progress=False)
            written = cache.size(feature_key(task, "train", backbone, args.target_size))
        else:
            feats = extract_features(backbone, task.load("train"), [args.target_size], batch_size=args.batch, progress=False)
            written = sum(b.nbytes for b in feats[args.target_size].layers.values())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10
    return {"mode": mode, "rows": rows, "peak_rss_MB": round(peak / 1e6), "after_backbone_MB": round(base / 1e6),
            "features_MB": round(written / 1e6), "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=500, help="N (the second split has 4N rows)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--target-size", type=int, default=8192)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--row-group-mib", type=int, default=32, help="row-group size of the cache writer")
    p.add_argument("--modes", nargs="+", default=["stream", "in-memory"])
    p.add_argument(f"--{CHILD}", nargs=2, metavar=("MODE", "ROWS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args)))
        return
    results = {}
    for mode in args.modes:
        for rows in (args.rows, 4 * args.rows):
            cmd = [sys.executable, __file__, f"--{CHILD}", mode, str(rows), "--size", str(args.size), "--target-size",
                   str(args.target_size), "--batch", str(args.batch), "--row-group-mib", str(args.row_group_mib)]
            out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
            results[(mode, rows)] = out
            print(json.dumps(out), flush=True)
    for mode in args.modes:
        small, big = results[(mode, args.rows)], results[(mode, 4 * args.rows)]
        print(f"{mode}: peak RSS {small['peak_rss_MB']} MB at N={args.rows} ({small['features_MB']} MB of features), "
              f"{big['peak_rss_MB']} MB at 4N ({big['features_MB']} MB) -> ratio {big['peak_rss_MB'] / small['peak_rss_MB']:.3f}"
              + (" (goal <= 1.25)" if mode == "stream" else ""))


if __name__ == "__main__":
    main()
