"""`h2t extract`: fill the feature cache for tasks x backbones x target sizes.

Each split goes through each backbone once, whatever the number of target sizes; files
already in the cache (and valid) are skipped. The size of what will be written is printed
first, and the job refuses to start when the storage says it lacks room. Under Ray
(`--address`, or `ray job submit`, which sets RAY_ADDRESS) every task x split x backbone is
one Ray task (orchestrator.extraction); otherwise extraction runs in this process.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from head2toe.cache import CacheItem, check_room, fill_split, human_bytes, plan_split
from head2toe.grids import DEFAULT_GRIDS
from head2toe.tasks import get_task
from head2toe.tasks.base import SPLITS
from head2toe.errors import H2TError
from jobs.common import add_backbone_args, build_backbone, build_cache, emit_json, target_size
from jobs.preflight import check_device, quiet_cache_log, write_problem

DEFAULT_TARGET_SIZES = sorted({t for g in DEFAULT_GRIDS.values() for t in g["target_size"]})


def parse_size(text: str) -> int:
    """'50G', '512M', '1T' or a byte count -> bytes."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    suffix = t[-1:] if t[-1:] in units else ""
    try:
        value = float(t[: len(t) - len(suffix)]) * units[suffix]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--min-free must be a size like 50G or 512M, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"--min-free must be >= 0, got {text!r}")
    return int(value)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, nargs="+", help="registry names (h2t tasks) or imagefolder:PATH")
    add_backbone_args(p, many=True)
    p.add_argument("--target-size", type=target_size, nargs="+", default=DEFAULT_TARGET_SIZES,
                   help=f"one or more target sizes, all from one forward pass (default {DEFAULT_TARGET_SIZES})")
    p.add_argument("--split", nargs="+", choices=SPLITS, default=list(SPLITS))
    p.add_argument("--min-free", type=parse_size, default=0, help="refuse unless this much stays free after writing (e.g. 20G)")
    p.add_argument("--address", default=None, help="Ray cluster address: one Ray task per task x split x backbone")
    p.add_argument("--gpus-per-task", type=float, default=0.0, help="GPUs each Ray extraction task reserves")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")


def main(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    check_device(args.device)
    tasks = [get_task(name) for name in args.task]
    sizes = sorted(set(args.target_size))
    cache = build_cache(args)
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    if write_problem(cache) is not None:  # refused (naming a file) before any forward pass or Ray start
        with quiet_cache_log():
            _refuse_unwritable(cache, _plan(args, tasks, sizes, cache))
    if args.address or os.environ.get("RAY_ADDRESS"):
        from orchestrator.extraction import ExtractionJob, run_extraction

        jobs = [ExtractionJob(spec, split, _backbone_config(args, b), tuple(sizes))
                for b in args.backbone for spec in args.task for split in args.split]
        summary = run_extraction(jobs, cache.uri, dtype=cache.dtype, address=args.address, num_gpus=args.gpus_per_task,
                                 min_free=args.min_free, report=say)
        items, forwards = summary.items, summary.forward_passes
    else:
        items, forwards = _run_here(args, tasks, sizes, cache, say)
    out = {
        "cache": cache.uri, "dtype": cache.dtype, "tasks": [t.name for t in tasks], "backbones": args.backbone,
        "target_sizes": sizes, "splits": args.split, "forward_passes": forwards,
        "files": [i.as_dict() for i in items], "written": sum(not i.cached for i in items),
        "written_bytes": sum(i.bytes for i in items if not i.cached), "rejected": [list(r) for r in cache.rejected],
        "wall_s": round(time.perf_counter() - start, 2),
    }
    if args.json:
        emit_json(out)
    else:
        print(f"{out['written']} file(s) written ({human_bytes(out['written_bytes'])}), "
              f"{len(items) - out['written']} already cached; backbone forward passes {forwards}; {out['wall_s']} s")
    return 0


def _plan(args: argparse.Namespace, tasks, sizes: list[int], cache) -> list:
    """(backbone, task, split, items) for every split of every task through every backbone."""
    plans = []
    for name in args.backbone:
        backbone = build_backbone(args, name)
        for task in tasks:
            for split in args.split:
                plans.append((backbone, task, split, plan_split(cache, backbone, task, split, sizes)))
    return plans


def _refuse_unwritable(cache, plans: list) -> None:
    todo = [i for *_, items in plans for i in items if not i.cached]
    problem = write_problem(cache) if todo else None
    if problem:
        raise H2TError(f"feature cache {cache.uri} is not writable ({problem}) and {len(todo)} file(s) must be written "
                       f"(e.g. {cache.path(todo[0].key)}); pass --cache with a writable folder or bucket, or make this one writable")


def _run_here(args: argparse.Namespace, tasks, sizes: list[int], cache, say) -> tuple[list[CacheItem], int]:
    """Plan everything first (so the size check covers the whole job), then extract split by split."""
    plans = _plan(args, tasks, sizes, cache)
    todo = [i for *_, items in plans for i in items if not i.cached]
    if todo:
        say(check_room(cache, sum(i.bytes for i in todo), args.min_free)
            + f" ({len(todo)} file(s); {sum(i.rows * i.features for i in todo):,} values)")
    else:
        say(f"all {sum(len(items) for *_, items in plans)} file(s) already in {cache.uri}")
    forwards = 0
    for backbone, task, split, items in plans:
        missing = [i.target_size for i in items if not i.cached]
        forwards += fill_split(cache, backbone, task, split, missing, batch_size=args.batch_size, progress=True)
    items = [i for *_, its in plans for i in its]
    return items, forwards


def _backbone_config(args: argparse.Namespace, name: str):
    from orchestrator.config import BackboneConfig

    return BackboneConfig(name=name, weights=args.weights, input_size=args.input_size, checkpoint=args.checkpoint,
                          batch_size=args.batch_size)


if __name__ == "__main__":
    from jobs._entry import standalone

    sys.exit(standalone(configure, main, "python -m jobs.extract"))
