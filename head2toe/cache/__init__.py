"""The shared Parquet feature cache: one backbone forward per image, read by every trial.

`open_cache(uri)` gives a `FeatureCache` (the `FeatureStore` that `FeatureProvider` takes);
`plan_split` / `check_room` / `shard_ranges` / `fill_split` are what extraction jobs build on.
The format is described in head2toe.cache.format and docs/cache.md.

What readers use (stable; trials and node-local mirrors build on it):

- `FeatureCache.load(key, layers=None) -> LayerFeatures | None`: the whole entry (every part
  of a sharded entry, in row order), every row group's digests checked; None when absent or
  invalid (invalid: logged and recorded in `rejected`). Local single-group files come back as
  zero-copy views of a memory map.
- `FeatureCache.iter_rows(key, layers=None) -> Iterator[LayerFeatures]`: the rows in order,
  one row group per chunk (`meta["row_start"]` = its first row), each checked before it is
  yielded; memory of one row group. FileNotFoundError when absent, `InvalidFile` (message
  "FILE: reason") on bad data.
- `FeatureCache.entry_files(key) -> list[str]`: paths relative to the cache root of every file
  of the entry; copy them under the same names into another root, `open_cache(that_root)`,
  and the entry reads the same there. FileNotFoundError when absent.
- `FeatureCache.entry_bytes(key, layers=None) -> int`: bytes of those layer columns across the
  entry (rows x width x itemsize), from metadata only.
- `head2toe.extract.iter_features(backbone, data, target_sizes, ...)`: one batch of pooled
  features per target size at a time, in row order.
"""
from head2toe.cache.format import FORMAT_VERSION, InvalidFile
from head2toe.cache.keys import feature_key
from head2toe.cache.plan import CacheItem, check_room, file_bytes, fill_split, human_bytes, layer_widths, plan_split, shard_ranges
from head2toe.cache.store import EntryWriter, FeatureCache, default_cache_uri, open_cache

__all__ = [
    "FORMAT_VERSION", "CacheItem", "EntryWriter", "FeatureCache", "InvalidFile", "check_room", "default_cache_uri",
    "feature_key", "file_bytes", "fill_split", "human_bytes", "layer_widths", "open_cache", "plan_split", "shard_ranges",
]
