"""Feature-cache speed ratios, each measured within one run (these machines are noisy):

1. cache read of a few selected layers vs `np.load` of the same bytes        (goal >= 0.8)
2. cache write throughput vs `np.save` of the same bytes                    (goal >= 0.5)
3. extraction with taps + pooling + cache write vs a plain forward           (goal >= 0.8)
4. with --row-groups: whole-entry `load` and streamed `iter_rows` vs `np.load` at several
   row-group sizes (how head2toe.cache.format.ROW_GROUP_BYTES was chosen)

Run: `.venv/bin/python -m head2toe.allocator -- .venv/bin/python benchmarks/bench_cache.py [--quick] [--no-extract] [--row-groups]`.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from head2toe.cache import open_cache
from head2toe.features import LayerFeatures


def interleaved(fns: list, reps: int) -> list[float]:
    """Median wall seconds per function (see `interleaved_clocks`)."""
    return [wall for wall, _ in interleaved_clocks(fns, reps)]


def interleaved_clocks(fns: list, reps: int) -> list[tuple[float, float]]:
    """Median (wall, CPU) seconds per function after one warm-up call each (files stay in
    the page cache), the calls alternated so that load from other processes hits every
    contender alike. CPU time is the robust one on a shared machine."""
    for fn in fns:
        fn()
    times: list[list[tuple[float, float]]] = [[] for _ in fns]
    for _ in range(reps):
        for fn, ts in zip(fns, times):
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            ts.append((time.perf_counter() - wall, time.process_time() - cpu))
    return [(statistics.median(w for w, _ in ts), statistics.median(c for _, c in ts)) for ts in times]


def bench_io(args, folder: Path) -> dict:
    rng = np.random.default_rng(0)
    width = args.features // args.layers
    feats = LayerFeatures({f"blocks.{i}.act": rng.standard_normal((args.rows, width), dtype=np.float32).astype(np.float16)
                           for i in range(args.layers)}, rng.integers(0, 10, args.rows), {})
    total = sum(b.nbytes for b in feats.layers.values())
    cache = open_cache(str(folder / "cache"))
    whole = np.concatenate(list(feats.layers.values()), axis=1)
    # Both sides write a new file per call, as extraction does (it writes only missing keys):
    # renaming over an existing file made ext4 flush the new one first (auto_da_alloc), ~30 %
    # of the cache's wall time here, a cost a real extraction never pays.
    fresh = iter(range(1 << 30))
    (write_s, write_cpu), (save_s, save_cpu) = interleaved_clocks(
        [lambda: cache.save(f"bench-{next(fresh)}", feats, {"bench": True}), lambda: np.save(folder / f"all-{next(fresh)}.npy", whole)],
        args.reps)
    cache.save("bench", feats, {"bench": True})
    chosen = [f"blocks.{i}.act" for i in np.linspace(0, args.layers - 1, args.select).astype(int)]
    npy = folder / "selected.npy"
    np.save(npy, np.concatenate([feats.layers[c] for c in chosen], axis=1))
    sel_bytes = npy.stat().st_size
    arrow = lambda: pq.read_table(cache.path("bench"), columns=chosen, memory_map=True)  # noqa: E731  Arrow's decoder, no digests
    read_s, arrow_s, np_s = interleaved([lambda: cache.load("bench", chosen), arrow, lambda: np.load(npy)], args.reps)
    got = cache.load("bench", chosen)
    assert all(np.array_equal(got.layers[c], feats.layers[c]) for c in chosen)
    return {
        "matrix": f"{args.rows} x {args.features} float16 in {args.layers} layer columns ({total / 1e6:.0f} MB)",
        "read_selected": f"{args.select} layers, {sel_bytes / 1e6:.0f} MB",
        "cache_read_GBps": round(sel_bytes / read_s / 1e9, 2), "np_load_GBps": round(sel_bytes / np_s / 1e9, 2),
        "read_ratio": round(np_s / read_s, 3), "read_goal": 0.8,
        "arrow_read_GBps": round(sel_bytes / arrow_s / 1e9, 2), "arrow_read_ratio": round(np_s / arrow_s, 3),
        "cache_write_GBps": round(total / write_s / 1e9, 2), "np_save_GBps": round(total / save_s / 1e9, 2),
        "write_ratio_vs_np_save": round(save_s / write_s, 3), "write_goal": 0.5,
        "write_ratio_cpu_time": round(save_cpu / write_cpu, 3),
        "file_MB": round(cache.size("bench") / 1e6, 1),
    }


def bench_row_groups(args, folder: Path) -> list[dict]:
    """Read rates of one entry written with several row-group sizes: `load` (memory-mapped,
    zero-copy only for a single group, one concatenation otherwise) and `iter_rows` (one
    group at a time, one read each), both with digests, vs `np.load` of the same bytes."""
    from head2toe.cache.format import ROW_OVERHEAD

    rng = np.random.default_rng(0)
    width = args.features // args.layers
    feats = LayerFeatures({f"blocks.{i}.act": rng.standard_normal((args.rows, width), dtype=np.float32).astype(np.float16)
                           for i in range(args.layers)}, rng.integers(0, 10, args.rows), {})
    chosen = [f"blocks.{i}.act" for i in np.linspace(0, args.layers - 1, args.select).astype(int)]
    npy = folder / "rg.npy"
    np.save(npy, np.concatenate([feats.layers[c] for c in chosen], axis=1))
    sel = npy.stat().st_size
    row_bytes = args.features * 2 + ROW_OVERHEAD
    out = []
    for mib in args.row_group_mib:
        cache = open_cache(str(folder / f"rg{mib}"), row_group_bytes=mib << 20)
        cache.save("rg", feats, {})
        stream = lambda: sum(len(c) for c in cache.iter_rows("rg", chosen))  # noqa: E731, B023
        (load_s, load_c), (iter_s, iter_c), (np_s, np_c) = interleaved_clocks(
            [lambda: cache.load("rg", chosen), stream, lambda: np.load(npy)], args.reps)  # noqa: B023
        out.append({"row_group_MiB": mib, "groups": -(-args.rows // max(1, (mib << 20) // row_bytes)),
                    "load_ratio": round(np_s / load_s, 3), "iter_rows_ratio": round(np_s / iter_s, 3),
                    "load_ratio_cpu": round(np_c / load_c, 3), "iter_rows_ratio_cpu": round(np_c / iter_c, 3),
                    "np_load_GBps": round(sel / np_s / 1e9, 2)})
    return out


def bench_extract(args, folder: Path) -> dict:
    from head2toe.backbones import create_backbone
    from head2toe.extract import extract_features
    from head2toe.preprocess import batches, to_input
    from head2toe.tasks.base import ImageSplit

    torch.set_num_threads(args.threads) if args.threads else None
    b = create_backbone(args.backbone, weights="pretrained" if args.backbone == "efficientnet_lite0" else "random", input_size=args.size)
    rng = np.random.default_rng(0)
    data = ImageSplit(rng.integers(0, 256, (args.images, args.size, args.size, 3), dtype=np.uint8), rng.integers(0, 10, args.images))
    cache = open_cache(str(folder / "extract"))

    def plain():
        with torch.inference_mode():
            for _, chunk in batches(data.images, args.batch):
                b.model(to_input(chunk, b.input_size, b.spec.mean, b.spec.std))

    write_s: list[float] = []

    def full():
        out = extract_features(b, data, args.target_sizes, batch_size=args.batch, progress=False)
        start = time.perf_counter()
        for t, feats in out.items():
            cache.save(f"extract-{t}", feats, {"target_size": t})
        write_s.append(time.perf_counter() - start)

    (plain_s, plain_cpu), (full_s, full_cpu) = interleaved_clocks([plain, full], args.extract_reps)
    return {
        "backbone": f"{args.backbone} @ {args.size}px, batch {args.batch}, {args.images} images, target sizes {args.target_sizes}",
        "plain_img_s": round(args.images / plain_s, 1), "extract_write_img_s": round(args.images / full_s, 1),
        "extract_ratio": round(plain_s / full_s, 3), "extract_goal": 0.8,
        "extract_ratio_cpu_time": round(plain_cpu / full_cpu, 3),  # robust to other processes on a shared machine
        "write_share": round(statistics.median(write_s) / full_s, 4),  # of the extraction's wall time
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--features", type=int, default=200_000)
    p.add_argument("--layers", type=int, default=50)
    p.add_argument("--select", type=int, default=5, help="layers read back (column projection)")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--images", type=int, default=128)
    p.add_argument("--target-sizes", type=int, nargs="+", default=[1024])
    p.add_argument("--extract-reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--no-extract", action="store_true", help="skip the extraction part (3)")
    p.add_argument("--row-groups", action="store_true", help="also part 4: read rates per row-group size")
    p.add_argument("--row-group-mib", type=int, nargs="+", default=[8, 32, 128, 512])
    args = p.parse_args()
    if args.quick:
        args.rows, args.features, args.images, args.size, args.reps, args.extract_reps = 200, 20_000, 32, 96, 2, 1
    with tempfile.TemporaryDirectory(prefix="h2t-bench-cache-") as tmp:
        io = bench_io(args, Path(tmp))
        print(json.dumps(io))
        if args.row_groups:
            for row in bench_row_groups(args, Path(tmp)):
                print(json.dumps(row))
        ex = None if args.no_extract else bench_extract(args, Path(tmp))
        print(json.dumps(ex))
    from head2toe.allocator import active_allocator

    print(f"allocator {active_allocator()}")
    print(f"read {args.select} selected layers: cache {io['cache_read_GBps']} GB/s vs np.load {io['np_load_GBps']} GB/s "
          f"-> ratio {io['read_ratio']} (goal >= 0.8; digests checked); Arrow's reader on the same file "
          f"{io['arrow_read_GBps']} GB/s -> ratio {io['arrow_read_ratio']}")
    print(f"write: cache {io['cache_write_GBps']} GB/s, np.save {io['np_save_GBps']} GB/s -> ratio {io['write_ratio_vs_np_save']} "
          f"(goal >= 0.5; digests computed); by CPU time {io['write_ratio_cpu_time']}")
    if ex is None:
        return
    print(f"extraction + pooling + write {ex['extract_write_img_s']} img/s vs plain forward {ex['plain_img_s']} img/s "
          f"-> ratio {ex['extract_ratio']} (goal >= 0.8); by CPU time {ex['extract_ratio_cpu_time']}; "
          f"cache writes take {ex['write_share']:.1%} of it (the rest of the gap is taps + pooling, see bench_core)")


if __name__ == "__main__":
    main()
