"""Fill the feature cache on a Ray cluster: one Ray task per task x split x backbone.

The driver plans (which files are missing, how many bytes they take, whether the storage
has room) and launches a task only for splits with something missing; each task runs the
backbone once over its split and writes every missing target size. Workers reach the
cache through its URI, so it must be storage they all see (NFS, s3://, gs://). Ray lives
here, never in head2toe.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import ray
from tqdm.auto import tqdm

from head2toe.allocator import allocator_env
from head2toe.backbones import create_backbone
from head2toe.cache import CacheItem, check_room, fill_split, open_cache, plan_split
from head2toe.tasks import get_task
from orchestrator.config import BackboneConfig, SweepConfig
from orchestrator.plan import extraction_needs


@dataclass(frozen=True)
class ExtractionJob:
    """One split of one task through one backbone, at every listed target size."""

    task: str  # registry name or imagefolder:PATH
    split: str
    backbone: BackboneConfig
    target_sizes: tuple[int, ...]


@dataclass
class ExtractionSummary:
    items: list[CacheItem] = field(default_factory=list)  # every file the jobs cover, with `cached` as planned
    forward_passes: int = 0  # images the Ray tasks forwarded
    launched: int = 0  # Ray tasks run (jobs with nothing missing launch none)


def jobs_for_sweep(cfg: SweepConfig, splits: tuple[str, ...] = ("train", "test")) -> list[ExtractionJob]:
    return [ExtractionJob(task, split, bb, tuple(sizes)) for task, bb, sizes in extraction_needs(cfg) for split in splits]


def extract_for_sweep(cfg: SweepConfig, splits: tuple[str, ...] = ("train", "test"), report: Callable[[str], None] = print) -> ExtractionSummary:
    """The extraction stage of a sweep: fills `cfg.cache` with the resources of `cfg.resources.extract`."""
    res = cfg.resources.extract
    return run_extraction(jobs_for_sweep(cfg, splits), cfg.cache, num_cpus=res.cpu, num_gpus=res.gpu, report=report)


def run_extraction(jobs: list[ExtractionJob], cache_uri: str | None, dtype: str = "float16", address: str | None = None,
                   num_cpus: float = 1, num_gpus: float = 0, min_free: int = 0,
                   report: Callable[[str], None] = print) -> ExtractionSummary:
    """Plan on the driver, refuse when the storage lacks room, then one Ray task per job with anything missing."""
    cache = open_cache(cache_uri, dtype)
    summary = ExtractionSummary()
    todo: list[ExtractionJob] = []
    backbones = {}
    for job in jobs:
        if job.backbone not in backbones:
            bb = job.backbone
            backbones[bb] = create_backbone(bb.name, weights=bb.weights, input_size=bb.input_size, checkpoint=bb.checkpoint)
        items = plan_split(cache, backbones[job.backbone], get_task(job.task), job.split, list(job.target_sizes))
        summary.items += items
        missing = tuple(i.target_size for i in items if not i.cached)
        if missing:
            todo.append(ExtractionJob(job.task, job.split, job.backbone, missing))
    needed = sum(i.bytes for i in summary.items if not i.cached)
    report(check_room(cache, needed, min_free) + f" ({len(todo)} Ray task(s), {len(jobs) - len(todo)} split(s) already cached)")
    if not todo:
        return summary
    if not ray.is_initialized():
        ray.init(address=address, runtime_env={"env_vars": allocator_env()}, configure_logging=False)
    remote = ray.remote(_extract_job)
    pending = [remote.options(num_cpus=num_cpus, num_gpus=num_gpus).remote(job, cache.uri, dtype) for job in todo]
    summary.launched = len(pending)
    with tqdm(total=len(pending), desc="extract (Ray tasks)", unit="split") as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            summary.forward_passes += ray.get(done[0])
            bar.update(1)
    return summary


def _extract_job(job: ExtractionJob, cache_uri: str, dtype: str) -> int:
    """Runs in a Ray worker: the backbone on this worker's device, one pass, every missing size written."""
    import torch

    bb = job.backbone
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backbone = create_backbone(bb.name, weights=bb.weights, input_size=bb.input_size, checkpoint=bb.checkpoint, device=device)
    cache = open_cache(cache_uri, dtype)
    return fill_split(cache, backbone, get_task(job.task), job.split, list(job.target_sizes), batch_size=bb.batch_size, progress=False)
