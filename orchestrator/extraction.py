"""Fill the feature cache on a Ray cluster: one Ray task per task x split x backbone, or per
shard of a split too large for one (`extract_shard_bytes`).

The driver plans (which entries are missing, how many bytes they take, whether the storage
has room, how a large split is cut into row ranges) and launches a task only for what is
missing; each task runs the backbone once over its rows and streams every missing target
size into the cache, row group by row group. A sharded split's parts are separate files of
one entry: when every part of a split is written, the driver publishes each entry's
manifest (from part footers; it reads no features), and only then is the entry visible. A
rerun after a lost shard redoes only the parts that are missing. Workers reach the cache
through its URI, so it must be storage they all see (NFS, s3://, gs://). Ray lives here,
never in head2toe.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import ray
from tqdm.auto import tqdm

from head2toe.allocator import allocator_env
from head2toe.cache import CacheItem, check_room, feature_key, fill_split, open_cache, plan_split, shard_ranges
from head2toe.tasks import get_task
from orchestrator.config import BackboneConfig, SweepConfig
from orchestrator.plan import extraction_needs


@dataclass(frozen=True)
class ExtractionJob:
    """One split of one task through one backbone, at every listed target size; with `part`
    = (index, count, start, stop) only rows [start, stop), written as part `index` of `count`."""

    task: str  # registry name or imagefolder:PATH
    split: str
    backbone: BackboneConfig
    target_sizes: tuple[int, ...]
    part: tuple[int, int, int, int] | None = None


@dataclass
class ExtractionSummary:
    items: list[CacheItem] = field(default_factory=list)  # every entry the jobs cover, with `cached` as planned
    forward_passes: int = 0  # images the Ray tasks forwarded
    launched: int = 0  # Ray tasks run (jobs with nothing missing launch none)
    sharded: int = 0  # entries published from parts


def jobs_for_sweep(cfg: SweepConfig, splits: tuple[str, ...] = ("train", "test")) -> list[ExtractionJob]:
    return [ExtractionJob(task, split, bb, tuple(sizes)) for task, bb, sizes in extraction_needs(cfg) for split in splits]


def extract_for_sweep(cfg: SweepConfig, splits: tuple[str, ...] = ("train", "test"), report: Callable[[str], None] = print) -> ExtractionSummary:
    """The extraction stage of a sweep: fills `cfg.cache` with the resources of `cfg.resources.extract`."""
    res = cfg.resources.extract
    return run_extraction(jobs_for_sweep(cfg, splits), cfg.cache, num_cpus=res.cpu, num_gpus=res.gpu,
                          shard_bytes=cfg.extract_shard_bytes, verify_data=False, report=report)


def run_extraction(jobs: list[ExtractionJob], cache_uri: str | None, dtype: str = "float16", address: str | None = None,
                   num_cpus: float = 1, num_gpus: float = 0, min_free: int = 0, shard_bytes: int | None = None,
                   row_group_bytes: int | None = None, max_retries: int = 2, verify_data: bool = True,
                   report: Callable[[str], None] = print) -> ExtractionSummary:
    """Plan on the driver, refuse when the storage lacks room, then one Ray task per job (per
    shard of a job above `shard_bytes`) with anything missing; a lost task is retried up to
    `max_retries` times, and parts finished before a failure stay for the next run. With
    verify_data=False (a sweep) the plan trusts entries whose footers check out and reads
    no feature bytes; readers check the digests."""
    cache = open_cache(cache_uri, dtype)
    summary = ExtractionSummary()
    todo: list[ExtractionJob] = []
    split_rows: dict[tuple[str, str, BackboneConfig], int] = {}
    publish: dict[tuple[str, str, BackboneConfig], tuple[int, list[str]]] = {}  # split -> (part count, keys)
    backbones = {}
    for job in jobs:
        bb = job.backbone
        if bb not in backbones:
            backbones[bb] = bb.create()
        items = plan_split(cache, backbones[bb], get_task(job.task), job.split, list(job.target_sizes), verify_data=verify_data)
        summary.items += items
        missing = [i for i in items if not i.cached]
        if not missing:
            continue
        sizes = tuple(i.target_size for i in missing)
        split_rows[(job.task, job.split, bb)] = missing[0].rows
        ranges = shard_ranges(missing[0].rows, sum(i.bytes for i in missing), shard_bytes, bb.batch_size)
        if len(ranges) == 1:
            todo.append(ExtractionJob(job.task, job.split, bb, sizes))
            continue
        publish[(job.task, job.split, bb)] = (len(ranges), [i.key for i in missing])
        todo += [ExtractionJob(job.task, job.split, bb, sizes, (k, len(ranges), a, b)) for k, (a, b) in enumerate(ranges)]
    needed = sum(i.bytes for i in summary.items if not i.cached)
    shards = f", {sum(n for n, _ in publish.values())} of them shards of {len(publish)} large split(s)" if publish else ""
    report(check_room(cache, needed, min_free) + f" ({len(todo)} Ray task(s){shards}, "
           f"{len(jobs) - len({(j.task, j.split, j.backbone) for j in todo})} split(s) already cached)")
    if not todo:
        return summary
    if not ray.is_initialized():
        ray.init(address=address, runtime_env={"env_vars": allocator_env()}, configure_logging=False)
    remote = ray.remote(_extract_job).options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries)
    # largest first (rows to forward), so no long split starts last while the other workers idle
    todo.sort(key=lambda j: j.part[3] - j.part[2] if j.part else split_rows[(j.task, j.split, j.backbone)], reverse=True)
    pending = {remote.remote(job, cache.uri, dtype, row_group_bytes): job for job in todo}
    summary.launched = len(pending)
    left = {split: n for split, (n, _) in publish.items()}
    failed: list[str] = []
    with tqdm(total=len(pending), desc="extract (Ray tasks)", unit="task") as bar:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(done[0])
            bar.update(1)
            try:
                summary.forward_passes += ray.get(done[0])
            except (ray.exceptions.RayError, OSError) as e:
                failed.append(f"{job.task}/{job.split} {job.backbone.name}" + (f" part {job.part[0]} of {job.part[1]}" if job.part else "")
                              + f": {type(e).__name__}")
                continue
            split = (job.task, job.split, job.backbone)
            if split in left:
                left[split] -= 1
                if left[split] == 0:  # every part written: the entries become visible now
                    count, keys = publish[split]
                    for key in keys:
                        cache.publish_parts(key, count)
                    summary.sharded += len(keys)
    if failed:
        raise RuntimeError(f"{len(failed)} extraction task(s) failed ({'; '.join(failed[:3])}); the parts that finished are "
                           "kept: rerun to extract only what is missing")
    return summary


@lru_cache(maxsize=1)
def _worker_backbone(bb: BackboneConfig, device: str):
    """The worker keeps its last backbone: Ray reuses a worker for the next extraction task,
    which then skips building the model, loading its weights and the shape probe (2-9 s of
    a 1-CPU worker, benchmarks/bench_extract.py). Memory: one frozen backbone per worker."""
    return bb.create(device=device)


def _extract_job(job: ExtractionJob, cache_uri: str, dtype: str, row_group_bytes: int | None) -> int:
    """Runs in a Ray worker: the backbone on this worker's device, one pass over the job's rows,
    every missing target size streamed into the cache (a part's valid file is kept)."""
    import torch

    bb = job.backbone
    task = get_task(job.task)
    backbone = _worker_backbone(bb, "cuda" if torch.cuda.is_available() else "cpu")
    cache = open_cache(cache_uri, dtype, row_group_bytes=row_group_bytes)
    sizes = list(job.target_sizes)
    if job.part is not None:  # a retried or rerun shard keeps the target sizes it already wrote
        sizes = [t for t in sizes if not cache.part_valid(feature_key(task, job.split, backbone, t, dtype), job.part[0], job.part[1])]
    return fill_split(cache, backbone, task, job.split, sizes, batch_size=bb.batch_size, progress=False, part=job.part)
