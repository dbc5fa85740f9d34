"""The Ray extraction fan-out: one Ray task per task x split x backbone (per shard of a large
split), none when cached; a shard killed mid-write leaves no entry, and a rerun redoes only it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from head2toe.cache import open_cache
from orchestrator.config import BackboneConfig
from orchestrator.extraction import ExtractionJob, run_extraction
from sweep_helpers import worker_killer


def test_one_ray_task_per_split_then_nothing_when_cached(local_ray, tmp_path):
    bb = BackboneConfig(name="efficientnet_lite0", weights="random", input_size=32)
    jobs = [ExtractionJob("faces", split, bb, (64, 128)) for split in ("train", "test")]
    lines: list[str] = []
    first = run_extraction(jobs, str(tmp_path), report=lines.append)
    assert (first.launched, first.forward_passes) == (2, 200)  # both target sizes from one pass per split
    assert len(first.items) == 4 and not any(i.cached for i in first.items)
    assert "will write" in lines[0] and "free" in lines[0]
    cache = open_cache(str(tmp_path))
    assert all(cache.load(i.key) is not None for i in first.items)
    again = run_extraction(jobs, str(tmp_path), report=lines.append)
    assert (again.launched, again.forward_passes) == (0, 0) and all(i.cached for i in again.items)


def _sharded_jobs(bb: BackboneConfig) -> list[ExtractionJob]:
    return [ExtractionJob("faces", "train", bb, (64, 128))]


# faces/train: 100 rows of ~94 KB (both target sizes, 9.4 MB): 2.5 MB shards -> 4 parts of whole batches, 2 rows per row group
SHARDED = dict(shard_bytes=2_500_000, row_group_bytes=100_000)


def test_large_split_extracts_in_shards_bit_identical_to_in_memory(local_ray, tmp_path):
    from head2toe.backbones import create_backbone
    from head2toe.cache import feature_key
    from head2toe.extract import extract_features
    from head2toe.tasks import get_task

    bb = BackboneConfig(name="efficientnet_lite0", weights="random", input_size=32, batch_size=8)
    got = run_extraction(_sharded_jobs(bb), str(tmp_path), report=lambda _: None, **SHARDED)
    assert (got.launched, got.forward_passes, got.sharded) == (4, 100, 2)
    backbone = create_backbone("efficientnet_lite0", weights="random", input_size=32)
    task = get_task("faces")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the 1-CPU Ray workers: CPU kernels' sums depend on the thread count
    try:
        want = extract_features(backbone, task.load("train"), [64, 128], batch_size=8, progress=False)
    finally:
        torch.set_num_threads(threads)
    cache = open_cache(str(tmp_path))
    for t in (64, 128):
        key = feature_key(task, "train", backbone, t)
        files = cache.entry_files(key)
        assert files[0] == f"{key}.manifest.json" and len(files) == 5
        assert max(pq.ParquetFile(f"{tmp_path}/{f}").metadata.num_row_groups for f in files[1:]) > 1
        loaded = cache.load(key)
        chunks = list(cache.iter_rows(key))
        assert len(chunks) > 4
        for name, block in want[t].layers.items():
            assert np.array_equal(loaded.layers[name], block), name  # bit-identical to the in-memory path
            assert np.array_equal(np.concatenate([c.layers[name] for c in chunks]), block), name
        assert np.array_equal(loaded.labels, want[t].labels)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def shard_killer(folder: Path):
    """SIGKILL the Ray worker that holds a half-written part file open (a temporary file with a
    row group in it), not just any extraction worker: a pre-empted node mid-write."""
    def writing() -> set[str]:
        return {str(p) for p in folder.iterdir() if p.name.startswith(".tmp-") and p.is_file() and p.stat().st_size > 1000}

    return worker_killer(lambda: bool(writing()), title="ray::_extract_job",
                               chosen=lambda proc: bool(writing() & {f.path for f in proc.open_files()}))


def test_killed_shard_leaves_no_entry_and_a_rerun_redoes_only_its_part(local_ray, tmp_path):
    bb = BackboneConfig(name="efficientnet_lite0", weights="random", input_size=64, batch_size=2)
    with shard_killer(tmp_path) as killed, pytest.raises(RuntimeError, match="1 extraction task"):
        run_extraction(_sharded_jobs(bb), str(tmp_path), report=lambda _: None, max_retries=0, **SHARDED)
    assert len(killed) == 1
    cache = open_cache(str(tmp_path))
    items = plan_items(tmp_path, bb)
    assert not any(i.cached for i in items) and all(cache.load(i.key) is None for i in items)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert not any(n.endswith(".manifest.json") for n in names)
    assert any(n.startswith(".tmp-") for n in names), "the shard died mid-write, leaving only its temporary file"
    parts = [n for n in names if ".part-" in n and not n.startswith(".tmp-")]
    assert len(parts) == 2 * 3, "the three other shards finished and are kept"
    again = run_extraction(_sharded_jobs(bb), str(tmp_path), report=lambda _: None, **SHARDED)
    assert again.launched == 4 and again.forward_passes in (24, 26), "only the killed part's rows go through the backbone"
    assert all(cache.load(i.key) is not None for i in items) and len(cache.load(items[0].key)) == 100


def plan_items(folder: Path, bb: BackboneConfig):
    from head2toe.backbones import create_backbone
    from head2toe.cache import plan_split
    from head2toe.tasks import get_task

    backbone = create_backbone(bb.name, weights=bb.weights, input_size=bb.input_size)
    return plan_split(open_cache(str(folder)), backbone, get_task("faces"), "train", [64, 128])
