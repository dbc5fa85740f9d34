"""One copy of a cache entry per node, shared by every trial process on it.

A local folder or an NFS mount is read in place: `FeatureCache.load` memory-maps it, so the
page cache holds one copy per node whatever the number of trial processes. Remote storage
(s3://, gs://, hdfs://) is copied once per node, under a file lock, into a node-local
folder, then read memory-mapped the same way; N trials of a task on a node fetch its bytes
once. `H2T_NODE_COPY=always` copies local paths too (a slow NFS), `never` reads remote
storage through Arrow in every trial. `H2T_NODE_CACHE` is the node-local folder (default
<tmp>/h2t-node-cache); each copy made is one line in its `copies.log`.
"""
from __future__ import annotations

import fcntl
import os
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from head2toe.cache import FeatureCache, open_cache
from head2toe.hashing import short_hash

MODE_ENV, DIR_ENV = "H2T_NODE_COPY", "H2T_NODE_CACHE"
MODES = ("auto", "always", "never")
COPY_BLOCK = 64 << 20


def node_id() -> str:
    """This node's Ray id (a fixed name outside Ray, e.g. `h2t run`)."""
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()[:16]
    except Exception:  # noqa: BLE001 - no runtime context outside a worker
        pass
    return "local"


def node_dir(cache_uri: str) -> Path:
    """The node-local folder that mirrors `cache_uri` (one per node, even when several Ray
    nodes share a machine, as in tests)."""
    root = Path(os.environ.get(DIR_ENV) or Path(tempfile.gettempdir()) / "h2t-node-cache")
    return root / node_id() / short_hash(cache_uri, 12)


def copy_mode() -> str:
    mode = os.environ.get(MODE_ENV, "auto")
    if mode not in MODES:
        raise ValueError(f"{MODE_ENV}={mode!r}; use one of {', '.join(MODES)}")
    return mode


def reader(cache_uri: str | None, key: str) -> FeatureCache:
    """The cache to read `key` from on this node: the shared one in place, or this node's copy
    of the entry (made now if it is the first trial here to need it)."""
    cache = open_cache(cache_uri)
    mode = copy_mode()
    if mode == "never" or (mode == "auto" and cache.local):
        return cache
    local = node_dir(cache.uri)
    local.mkdir(parents=True, exist_ok=True)
    with _locked(local / f".{key}.lock"):
        if not (local / f".{key}.done").exists():
            _copy_entry(cache, key, local)
    return open_cache(str(local), cache.dtype)


def drop(cache_uri: str | None, key: str) -> None:
    """Forget this node's copy of `key` (it failed validation: the next reader copies again)."""
    local = node_dir(open_cache(cache_uri).uri)
    (local / f".{key}.done").unlink(missing_ok=True)


def _copy_entry(cache: FeatureCache, key: str, local: Path) -> None:
    start, total = time.perf_counter(), 0
    for rel in cache.entry_files(key):
        target = local / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".tmp-{uuid.uuid4().hex}-{target.name}")
        with cache.fs.open_input_stream(f"{cache.root}/{rel}") as src, open(tmp, "wb") as out:
            while block := src.read(COPY_BLOCK):  # one streamed GET, not a request per MiB
                out.write(block)
        total += tmp.stat().st_size
        os.replace(tmp, target)  # readers of this folder only ever see whole files
    (local / f".{key}.done").touch()
    with open(local / "copies.log", "a") as log:
        log.write(f"{key} {total} {time.perf_counter() - start:.3f}\n")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
