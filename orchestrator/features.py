"""Where a sweep's features are, and how a trial gets them.

The driver never reads features. It computes each entry's cache key from identities alone
(task definition, split, backbone identity and layers, target size: no images, no feature
bytes) and hands trials the cache URI, their keys and the layers their method reads. A
trial loads its entry itself, column-projected, through `orchestrator.node_cache` (one copy
per node), and validates what it read (digests in the cache reader; NaN/Inf and the label
range here) before any probe trains on it.

A composite backbone ("a+b") has no entry of its own: its key names its members' keys
("a=KEY+b=KEY", `composite_key`), and the same readers zip the members' entries row by row
(one chunk per member held), with layer names qualified by member (docs/multi_backbone.md).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from head2toe.backbones import COMPOSITE_SEP, qualify, split_qualified
from head2toe.cache import InvalidFile
from head2toe.errors import H2TError
from head2toe.extract import iter_features
from head2toe.features import LayerFeatures, NormalizedFeatures
from head2toe.hashing import short_hash
from head2toe.methods import METHODS, PRELOGITS
from head2toe.provider import feature_key
from head2toe.tasks import get_task
from orchestrator import node_cache
from orchestrator.config import BackboneConfig, SweepConfig
from orchestrator.plan import extraction_needs

EntryKey = tuple[str, str, str, int]  # (task, backbone id, split, target size)


def backbone_id(bb: BackboneConfig) -> str:
    return short_hash(bb.identity(), 10)


def sweep_splits(cfg: SweepConfig) -> tuple[str, ...]:
    """Splits the sweep reads from the cache: train (final fits), each task's CV split, and
    test unless it streams."""
    cv = [get_task(t).cv_split for t in cfg.tasks]
    return tuple(dict.fromkeys(["train", *cv, *(["test"] if cfg.test_features == "cache" else [])]))


def sweep_keys(cfg: SweepConfig, splits: tuple[str, ...]) -> dict[EntryKey, str]:
    """Cache key of every entry the sweep's trials read (one backbone built per config, for
    its identity and layer names; its weights are not run); a composite's is `composite_key`
    of its members' keys."""
    keys: dict[EntryKey, str] = {}
    backbones = {}
    for task_name, bb, sizes in extraction_needs(cfg):
        if bb not in backbones:
            backbones[bb] = bb.create()
        task = get_task(task_name)
        for split in splits:
            for t in sizes:
                keys[(task_name, backbone_id(bb), split, t)] = feature_key(task, split, backbones[bb], t)
    for bb in (b for b in cfg.backbones if b.is_composite):
        for task_name, split, t in {(k[0], k[2], k[3]) for k in keys}:
            keys[(task_name, backbone_id(bb), split, t)] = composite_key(
                {m.name: keys[(task_name, backbone_id(m), split, t)] for m in bb.members()})
    return keys


def composite_key(member_keys: dict[str, str]) -> str:
    """A composite backbone's entry: its members' keys, in member order."""
    return COMPOSITE_SEP.join(f"{m}={k}" for m, k in member_keys.items())


def member_keys(key: str) -> dict[str, str] | None:
    """{member: key} of a composite key; None for a single backbone's key."""
    if "=" not in key:
        return None
    return dict(part.split("=", 1) for part in key.split(COMPOSITE_SEP))


def member_layers(members: list[str], layers: list[str] | None) -> dict[str, list[str] | None]:
    """Which layers to read from each member: a qualified name (member/layer) from its member,
    an unqualified one (e.g. Linear's pre_logits) from every member; None reads all."""
    if layers is None:
        return {m: None for m in members}
    out: dict[str, list[str]] = {m: [] for m in members}
    for name in layers:
        member, layer = split_qualified(name)
        for m in [member] if member else members:
            if m not in out:
                raise H2TError(f"layer {name!r} names no member of {COMPOSITE_SEP.join(members)}")
            out[m].append(layer)
    return out


def entry_widths(cache_uri: str | None, key: str, layers: list[str] | None) -> tuple[dict[str, int], int]:
    """({layer: width}, rows) of an entry from its footer (a composite's: every member's,
    qualified), only `layers` when given."""
    members = member_keys(key)
    if members is None:
        doc = node_cache.reader(cache_uri, key).read_meta(key)
        widths = {x["name"]: x["width"] for x in doc["layers"]}
        return (widths if layers is None else {n: widths[n] for n in layers}), doc["n_rows"]
    out, rows = {}, set()
    for m, names in member_layers(list(members), layers).items():
        widths, n = entry_widths(cache_uri, members[m], names)
        out.update({qualify(m, k): w for k, w in widths.items()})
        rows.add(n)
    if len(rows) != 1:
        raise H2TError(f"the members of {key} hold different row counts {sorted(rows)}; delete one member's entry to re-extract it")
    return out, rows.pop()


def layers_read(methods: list[str]) -> list[str] | None:
    """The layers these methods read: only pre-logits for Linear alone, else all (None)."""
    return [PRELOGITS] if all(METHODS[m].layers == PRELOGITS for m in methods) else None


_memo: dict[tuple, NormalizedFeatures] = {}  # this process's last matrix (a reused actor's next trial of the entry)


def load_train(cache_uri: str | None, key: str, layers: list[str] | None, num_classes: int) -> NormalizedFeatures:
    """The float32 unit-normalised matrix of an entry's `layers` (all when None), filled chunk
    by chunk as the entry streams from the cache, each chunk validated first: the trial's one
    copy of its features (2x their float16 bytes), nothing else of the split held."""
    memo_key = (cache_uri, key, tuple(layers or ()))
    if memo_key not in _memo:
        _memo.clear()  # the previous trial's matrix goes before this one is built
        widths, n_rows = entry_widths(cache_uri, key, layers)
        _memo[memo_key] = NormalizedFeatures.from_chunks(iter_entry(cache_uri, key, layers, num_classes), n_rows, widths)
    return _memo[memo_key]


def release_train() -> None:
    """Drop this process's matrix (a final trial holds only heads while the test rows stream)."""
    _memo.clear()


def iter_entry(cache_uri: str | None, key: str, layers: list[str] | None, num_classes: int) -> Iterator[LayerFeatures]:
    """An entry's rows chunk by chunk, in order, each validated before it is yielded (a
    composite's: its members' chunks zipped row by row, names qualified)."""
    members = member_keys(key)
    if members is not None:
        wanted = member_layers(list(members), layers)
        yield from zip_rows({m: iter_entry(cache_uri, k, wanted[m], num_classes) for m, k in members.items()})
        return
    cache = node_cache.reader(cache_uri, key)
    try:
        for chunk in cache.iter_rows(key, layers):
            chunk.check_finite()
            chunk.check_labels(num_classes)
            yield chunk
    except FileNotFoundError:
        raise H2TError(f"feature cache entry {key} is missing from {cache_uri}; rerun the sweep to extract it") from None
    except InvalidFile as e:
        raise H2TError(f"feature cache entry {key} in {cache_uri} is invalid: {e}; delete it to re-extract") from None


def check_entry(cache_uri: str | None, key: str, num_classes: int) -> int:
    """Read and validate a whole entry chunk by chunk (bounded memory); returns its rows."""
    return sum(len(chunk) for chunk in iter_entry(cache_uri, key, None, num_classes))


def zip_rows(streams: dict[str, Iterator[LayerFeatures]]) -> Iterator[LayerFeatures]:
    """Members' chunk streams of the same rows (chunked differently) as one stream of
    row-aligned chunks, layers qualified by member. Memory: one chunk per member."""
    current: dict[str, LayerFeatures | None] = {m: None for m in streams}
    offset = {m: 0 for m in streams}
    while True:
        for m, it in streams.items():
            if current[m] is None or offset[m] == len(current[m]):
                current[m], offset[m] = next(it, None), 0
        done = [m for m, c in current.items() if c is None]
        if len(done) == len(streams):
            return
        if done:
            raise H2TError(f"composite entry: {done[0]} ran out of rows before the other members; delete its entry to re-extract it")
        n = min(len(c) - offset[m] for m, c in current.items())
        layers, labels = {}, None
        for m, c in current.items():
            lo = offset[m]
            part = c.labels[lo:lo + n]
            if labels is None:
                labels, meta = part, {k: v for k, v in c.meta.items() if k not in ("row_start", "key")}
            elif not np.array_equal(part, labels):
                raise H2TError(f"composite entry: {m}'s rows do not align with the first member's (labels differ); "
                               "delete one member's entry to re-extract it")
            layers.update({qualify(m, k): v[lo:lo + n] for k, v in c.layers.items()})
            offset[m] += n
        yield LayerFeatures(layers, labels, meta)


def stream_features(bb: BackboneConfig, data, layers: dict[int, list[str] | None], device) -> Iterator[dict[int, LayerFeatures]]:
    """One backbone pass over `data`, a batch at a time: {target size: its `layers` (all when
    None)}. A composite runs each member on the same batches; its layers come qualified, an
    unqualified name read from every member (as `iter_entry` does)."""
    members = bb.members()
    names = [m.name for m in members]
    per_size = {t: member_layers(names, v) for t, v in layers.items()}  # {t: {member: layers}}
    runs = []
    for m in members:
        wanted = [per_size[t][m.name] for t in layers]
        union = None if any(w is None for w in wanted) else sorted({n for w in wanted for n in w})
        backbone = m.create(device=device)
        runs.append(iter_features(backbone, data, sorted(layers), batch_size=bb.batch_size, layers=union))
    for batches in zip(*runs, strict=True):
        out = {}
        for t in sorted(layers):
            parts = [b[t].subset(per_size[t][m]) if per_size[t][m] is not None else b[t] for m, b in zip(names, batches)]
            if not bb.is_composite:
                out[t] = parts[0]
                continue
            merged = {qualify(m, k): v for m, p in zip(names, parts) for k, v in p.layers.items()}
            out[t] = LayerFeatures(merged, parts[0].labels, dict(parts[0].meta))
        yield out
