"""Streamed cache entries: row-group chunks (`iter_rows`), per-row-group digests, sharded
entries (parts + manifest) and the files a node-local mirror copies (`entry_files`)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from head2toe.cache import InvalidFile, open_cache
from head2toe.cache.format import column_span
from head2toe.features import LayerFeatures
from test_cache import synthetic


def _concat(chunks: list[LayerFeatures]) -> LayerFeatures:
    return LayerFeatures({k: np.concatenate([c.layers[k] for c in chunks]) for k in chunks[0].layers},
                         np.concatenate([c.labels for c in chunks]), chunks[0].meta)


def _same(a: LayerFeatures, b: LayerFeatures, layers=None) -> bool:
    return all(np.array_equal(a.layers[k], b.layers[k]) for k in (layers or b.layers)) and np.array_equal(a.labels, b.labels)


def _sharded(cache, key: str, feats: LayerFeatures, cuts: list[int]) -> None:
    """Write `feats` as parts split at `cuts`, batch by batch, then publish the manifest."""
    edges = [0, *cuts, len(feats)]
    for i, (a, b) in enumerate(zip(edges, edges[1:])):
        with cache.writer(key, feats.widths, {"task": "t"}, rows=b - a, part=(i, len(edges) - 1), row_start=a) as w:
            for s in range(a, b, 3):  # batches of 3 rows, unaligned with row groups
                w.write(feats.rows(np.arange(s, min(b, s + 3))))
    cache.publish_parts(key, len(edges) - 1)


def test_iter_rows_chunks_concatenate_to_load_single_and_sharded(tmp_path):
    cache = open_cache(str(tmp_path), row_group_bytes=400)  # 400 // (36 * 2 + 16) = 4 rows per group
    feats = synthetic(n=30)
    cache.save("one", feats, {"task": "t"})
    _sharded(cache, "many", feats, [10, 21])
    for key, groups in (("one", [4] * 7 + [2]), ("many", [4, 4, 2, 4, 4, 3, 4, 4, 1])):
        chunks = list(cache.iter_rows(key, ["blocks.1", "pre_logits"]))
        assert [len(c) for c in chunks] == groups
        assert [c.meta["row_start"] for c in chunks] == list(np.cumsum([0, *groups[:-1]]))
        whole = cache.load(key, ["blocks.1", "pre_logits"])
        assert _same(_concat(chunks), whole) and _same(whole, feats, ["blocks.1", "pre_logits"])
        assert cache.entry_bytes(key) == 30 * 36 * 2 and cache.entry_bytes(key, ["blocks.1"]) == 30 * 7 * 2
    assert cache.entry_files("one") == ["one.parquet"]
    assert cache.entry_files("many") == ["many.manifest.json", *(f"many.part-{i:05d}-of-00003.parquet" for i in range(3))]
    assert not cache.rejected and not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    with pytest.raises(FileNotFoundError):
        list(cache.iter_rows("absent"))


def test_a_mirror_of_entry_files_reads_the_same(tmp_path):
    cache = open_cache(str(tmp_path / "shared"), row_group_bytes=400)
    feats = synthetic(n=30)
    _sharded(cache, "many", feats, [16])
    local = tmp_path / "node-local"
    for name in cache.entry_files("many"):
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(cache.root) / name, local / name)
    assert _same(open_cache(str(local)).load("many"), feats)


def test_entry_is_invisible_until_every_part_and_the_manifest_are_there(tmp_path):
    cache = open_cache(str(tmp_path))
    feats = synthetic(n=20)
    with cache.writer("k", feats.widths, {}, part=(0, 2)) as w:
        w.write(feats.rows(np.arange(10)))
    assert cache.load("k") is None and not cache.contains("k") and not cache.rejected
    with pytest.raises(FileNotFoundError):
        cache.publish_parts("k", 2)
    with pytest.raises(RuntimeError), cache.writer("k", feats.widths, {}, part=(1, 2), row_start=10) as w:
        w.write(feats.rows(np.arange(10, 15)))
        raise RuntimeError("the worker dies mid-write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.part-00000-of-00002.parquet"], "an aborted part leaves nothing"
    with cache.writer("k", feats.widths, {}, part=(1, 2), row_start=10) as w:
        w.write(feats.rows(np.arange(10, 20)))
    cache.publish_parts("k", 2)
    assert _same(cache.load("k"), feats) and cache.part_valid("k", 0, 2)


def _flip_group(path: str, group: int, column: str) -> None:
    md = pq.ParquetFile(path).metadata
    pos = [md.schema.column(i).name for i in range(md.num_columns)].index(column)
    start, nbytes = column_span(md, {}, group, pos, 7, 2)
    with open(path, "r+b") as f:
        f.seek(start + nbytes // 2)
        byte = f.read(1)
        f.seek(start + nbytes // 2)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("sharded", [False, True])
def test_corrupt_row_group_fails_before_its_chunk_is_yielded(tmp_path, sharded):
    cache = open_cache(str(tmp_path), row_group_bytes=400)
    feats = synthetic(n=30)
    if sharded:
        _sharded(cache, "k", feats, [12])
        path = cache.part_path("k", 1, 2)
    else:
        cache.save("k", feats, {})
        path = cache.path("k")
    _flip_group(path, 1, "blocks.1")
    seen = []
    with pytest.raises(InvalidFile) as err:
        for chunk in cache.iter_rows("k", ["blocks.1"]):
            seen.append(chunk)
    assert str(err.value).startswith(f"{path}: ") and "checksum mismatch in column 'blocks.1' of row group 1" in str(err.value)
    assert [len(c) for c in seen] == ([4] if not sharded else [4, 4, 4, 4]), "chunks up to the bad group, none after"
    assert cache.load("k") is None and cache.rejected[-1][0] == path and "row group 1" in cache.rejected[-1][1]
    assert not cache.contains("k")
    assert cache.load("k", ["pre_logits"]) is not None, "a column projection reads (and checks) only its columns"


def test_unreadable_manifest_is_named(tmp_path):
    cache = open_cache(str(tmp_path))
    _sharded(cache, "k", synthetic(n=10), [5])
    Path(cache.manifest_path("k")).write_text("{not json")
    with pytest.raises(InvalidFile, match=r"k\.manifest\.json: unreadable manifest"):
        next(cache.iter_rows("k"))
    assert not cache.contains("k") and cache.rejected[-1][0] == cache.manifest_path("k")
    assert cache.load("k") is None
