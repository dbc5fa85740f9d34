"""The Ray extraction fan-out: one Ray task per task x split x backbone, none when cached."""
from __future__ import annotations


from head2toe.cache import open_cache
from orchestrator.config import BackboneConfig
from orchestrator.extraction import ExtractionJob, run_extraction


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
