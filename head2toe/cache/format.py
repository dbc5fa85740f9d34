"""The on-disk form of one cached split: Parquet files with one column per layer.

Each layer is a `fixed_size_binary` column whose value is one row's pooled activations as
raw little-endian float16 (or float32) bytes: Parquet stores such a column as flat pages,
so reading it is a near-memcpy, where `fixed_size_list<halffloat>` goes through nested-list
levels and read ~8x slower here. `index` (position in the split) and `label` are int64.
The file's key-value metadata (`h2t` key, written when the file is closed) holds everything
needed to trust it: format version, key, dtype and width per layer, the file's first row in
the split and, per row group, its row count and an xxh3-128 digest per column (so a reader
streaming row groups checks each one before using it). A sharded entry's parts carry their
part number too; see head2toe.cache.store for how files make an entry.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import xxhash

from head2toe.features import LayerFeatures

FORMAT_VERSION = 2  # also in every cache key (head2toe.cache.keys): a new format never reads old files
META_KEY = b"h2t"
RESERVED = ("index", "label")
DTYPES = ("float16", "float32")
# Per row group. `load` of a one-group file is zero-copy (a memory map); more groups cost one
# concatenation. `iter_rows` and the extraction writer hold one group (per target size). 512 MiB
# keeps a VTAB-1k train split one group at moderate widths while bounding both (docs/cache.md).
ROW_GROUP_BYTES = 512 << 20
ROW_OVERHEAD = 16  # index + label, int64 each

# Files hold one PLAIN, uncompressed data page per column chunk (head2toe.cache.parquet): a
# layer's bytes then sit contiguously in the file, so a local reader can map them instead of
# decoding (see `column_span`).
MAX_PAGE_HEADER = 64  # bytes; a data page header without statistics is ~25


class InvalidFile(Exception):
    """A cached file that must not be used; the message says why."""


def digest(a: np.ndarray) -> str:
    return xxhash.xxh3_128_hexdigest(memoryview(np.ascontiguousarray(a)).cast("B"))


def little_endian(a: np.ndarray) -> np.ndarray:
    """Contiguous little-endian view (a copy only when the input is not already so)."""
    return np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<"), copy=False))


def check_layers(widths: dict[str, int], dtype: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"cache stores one dtype of {DTYPES} per file, got {dtype!r}")
    clash = [name for name in widths if name in RESERVED]
    if clash:
        raise ValueError(f"layer names {clash} clash with the reserved columns {RESERVED}")


def group_digests(blocks: dict[str, np.ndarray]) -> dict:
    """The footer's record of one row group: its rows and a digest per column."""
    return {"rows": len(next(iter(blocks.values()))), "columns": {name: digest(a) for name, a in blocks.items()}}


def footer_doc(key: str, widths: dict[str, int], dtype: str, meta: dict, row_start: int, groups: list[dict],
               part: tuple[int, int] | None) -> bytes:
    doc = {"format_version": FORMAT_VERSION, "key": key, "dtype": dtype, "byte_order": "little",
           "n_rows": sum(g["rows"] for g in groups), "row_start": row_start,
           "part": None if part is None else {"index": part[0], "count": part[1]},
           "layers": [{"name": n, "width": w} for n, w in widths.items()],
           "checksum": {"algorithm": "xxh3_128", "row_groups": groups}, "meta": meta}
    return json.dumps(doc, default=str).encode()


def rows_per_group(row_bytes: int, group_bytes: int | None = None) -> int:
    return max(1, (group_bytes or ROW_GROUP_BYTES) // max(1, row_bytes))


def read_doc(md, arrow_schema: pa.Schema, key: str) -> dict:
    """The footer document of a file (its FileMetaData and Arrow schema), checked; raises InvalidFile."""
    raw = (md.metadata or {}).get(META_KEY)
    if raw is None:
        raise InvalidFile("no h2t metadata (not a feature-cache file)")
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise InvalidFile(f"unreadable h2t metadata ({e})") from None
    if doc.get("format_version") != FORMAT_VERSION:
        raise InvalidFile(f"format version {doc.get('format_version')!r}, this code reads {FORMAT_VERSION}")
    if doc.get("key") != key:
        raise InvalidFile(f"holds key {doc.get('key')!r}, not {key!r}")
    if doc.get("dtype") not in DTYPES:
        raise InvalidFile(f"unknown dtype {doc.get('dtype')!r}")
    itemsize = np.dtype(doc["dtype"]).itemsize
    expected = {x["name"]: pa.binary(x["width"] * itemsize) for x in doc["layers"]}
    expected.update(index=pa.int64(), label=pa.int64())
    actual = {f.name: f.type for f in arrow_schema}
    if actual != expected:
        raise InvalidFile(f"schema {_short(actual)} does not match its metadata {_short(expected)}")
    groups = doc["checksum"]["row_groups"]
    if len(groups) != md.num_row_groups or any(g["rows"] != md.row_group(i).num_rows for i, g in enumerate(groups)):
        raise InvalidFile(f"{md.num_row_groups} row groups of {md.num_rows} rows, metadata lists {len(groups)} of "
                          f"{doc['n_rows']}: truncated or rewritten")
    return doc


def _short(types: dict) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in list(types.items())[:4]) + (", ..." if len(types) > 4 else "") + "}"


def column_span(md, doc: dict, group: int, position: int, width: int, itemsize: int) -> tuple[int, int] | None:
    """(file offset, bytes) of one column chunk's values when they sit contiguously as the
    chunk's last bytes (one PLAIN uncompressed page: the layout we write); None otherwise."""
    rows = md.row_group(group).num_rows
    chunk = md.row_group(group).column(position)
    nbytes = rows * width * itemsize
    header = chunk.total_compressed_size - nbytes
    if chunk.compression != "UNCOMPRESSED" or chunk.has_dictionary_page or not 0 < header <= MAX_PAGE_HEADER:
        return None
    return chunk.data_page_offset + header, nbytes


def mapped_group(mm, md, doc: dict, group: int, names: list[str]) -> dict[str, np.ndarray] | None:
    """Columns `names` (+ label) of one row group as read-only views of `mm` (a memory map of
    the whole file, or any buffer); None when the file is laid out otherwise."""
    dtype = np.dtype(doc["dtype"]).newbyteorder("<")
    widths = {x["name"]: x["width"] for x in doc["layers"]}
    position = {md.schema.column(i).name: i for i in range(md.num_columns)}
    rows = md.row_group(group).num_rows
    out = {}
    for name in [*names, "label"]:
        dt, width = (dtype, widths[name]) if name != "label" else (np.dtype("<i8"), 1)
        span = column_span(md, doc, group, position[name], width, dt.itemsize)
        if span is None or span[0] + span[1] > len(mm):
            return None
        out[name] = np.frombuffer(mm, dt, count=rows * width, offset=span[0]).reshape(rows, width)
    return out


def check_group(arrays: dict[str, np.ndarray], doc: dict, group: int) -> str | None:
    """The reason a row group's columns do not match their digests, or None."""
    sums = doc["checksum"]["row_groups"][group]["columns"]
    for name, arr in arrays.items():
        if digest(arr) != sums.get(name):
            return f"checksum mismatch in column {name!r} of row group {group} (corrupted data)"
    return None


def table_group(table: pa.Table, doc: dict, names: list[str]) -> dict[str, np.ndarray]:
    """Columns of an Arrow table (one row group or more) as numpy arrays (zero-copy for one chunk)."""
    dtype = np.dtype(doc["dtype"]).newbyteorder("<")
    widths = {x["name"]: x["width"] for x in doc["layers"]}
    out = {name: _column(table.column(name), dtype, widths[name]) for name in names}
    out["label"] = _column(table.column("label"), np.dtype("<i8"), 1)
    return out


def to_features(arrays: dict[str, np.ndarray], doc: dict, **extra) -> LayerFeatures:
    arrays = dict(arrays)
    labels = arrays.pop("label").reshape(-1).astype(np.int64, copy=False)
    return LayerFeatures(arrays, labels, {**doc["meta"], "key": doc["key"], **extra})


def _column(col: pa.ChunkedArray, dtype: np.dtype, width: int) -> np.ndarray:
    """One column as a numpy array (N, width): zero-copy for a single chunk, one copy otherwise."""
    parts = []
    for chunk in col.chunks:
        if chunk.null_count:
            raise InvalidFile("null values in a feature column")
        if pa.types.is_integer(chunk.type):
            parts.append(chunk.to_numpy(zero_copy_only=False).astype(dtype, copy=False).reshape(-1, 1))
        else:
            buf = chunk.buffers()[1]
            start = chunk.offset * width * dtype.itemsize
            parts.append(np.frombuffer(buf, dtype=dtype, count=len(chunk) * width, offset=start).reshape(len(chunk), width))
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else np.empty((0, width), dtype)
