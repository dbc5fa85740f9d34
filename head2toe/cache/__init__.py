"""The shared Parquet feature cache: one backbone forward per image, read by every trial.

`open_cache(uri)` gives a `FeatureCache` (the `FeatureStore` that `FeatureProvider` takes);
`plan_split` / `check_room` / `fill_split` are what extraction jobs build on. The format is
described in head2toe.cache.format and docs/cache.md.
"""
from head2toe.cache.format import FORMAT_VERSION, InvalidFile
from head2toe.cache.plan import CacheItem, check_room, file_bytes, fill_split, human_bytes, layer_widths, plan_split
from head2toe.cache.store import FeatureCache, default_cache_uri, open_cache

__all__ = [
    "FORMAT_VERSION", "CacheItem", "FeatureCache", "InvalidFile", "check_room", "default_cache_uri", "file_bytes",
    "fill_split", "human_bytes", "layer_widths", "open_cache", "plan_split",
]
