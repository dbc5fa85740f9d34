"""The on-disk form of one cached split: a Parquet table with one column per layer.

Each layer is a `fixed_size_binary` column whose value is one row's pooled activations as
raw little-endian float16 (or float32) bytes: Parquet stores such a column as flat pages,
so reading it is a near-memcpy, where `fixed_size_list<halffloat>` goes through nested-list
levels and read ~8x slower here. `index` (position in the split) and `label` are int64.
The footer holds a JSON document (`h2t` key) with everything needed to trust the file:
format version, key, dtype and width per layer, and an xxh3-128 digest per column.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import xxhash

from head2toe.features import LayerFeatures
from head2toe.provider import FORMAT_VERSION  # also in every key: a new format never reads old files
META_KEY = b"h2t"
RESERVED = ("index", "label")
DTYPES = ("float16", "float32")
ROW_GROUP_BYTES = 512 << 20  # per row group: big enough that a VTAB-1k train split is one group (one copy on read), small enough to stream large test splits


class InvalidFile(Exception):
    """A cached file that must not be used; the message says why."""


def digest(a: np.ndarray) -> str:
    return xxhash.xxh3_128_hexdigest(memoryview(np.ascontiguousarray(a)).cast("B"))


def _little_endian(a: np.ndarray) -> np.ndarray:
    """Contiguous little-endian view (a copy only when the input is not already so)."""
    return np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<"), copy=False))


def to_table(key: str, features: LayerFeatures, meta: dict) -> pa.Table:
    """LayerFeatures -> Arrow table (zero-copy for contiguous little-endian blocks) with metadata."""
    n = len(features)
    dtypes = {str(b.dtype) for b in features.layers.values()}
    if len(dtypes) != 1 or not dtypes <= set(DTYPES):
        raise ValueError(f"cache stores one dtype of {DTYPES} per file, got {sorted(dtypes)}")
    clash = [name for name in features.layers if name in RESERVED]
    if clash:
        raise ValueError(f"layer names {clash} clash with the reserved columns {RESERVED}")
    dtype = dtypes.pop()
    columns, layers, sums = {}, [], {}
    for name, block in features.layers.items():
        block = _little_endian(block)
        width = block.shape[1]
        columns[name] = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width * block.itemsize), n, [None, pa.py_buffer(block)])
        layers.append({"name": name, "width": width})
        sums[name] = digest(block)
    index = np.arange(n, dtype="<i8")
    labels = _little_endian(features.labels.astype(np.int64))
    columns["index"], columns["label"] = pa.array(index), pa.array(labels)
    sums["index"], sums["label"] = digest(index), digest(labels)
    doc = {"format_version": FORMAT_VERSION, "key": key, "dtype": dtype, "byte_order": "little", "n_rows": n,
           "layers": layers, "checksum": {"algorithm": "xxh3_128", "columns": sums}, "meta": meta}
    schema = pa.schema([pa.field(k, v.type, nullable=False) for k, v in columns.items()],
                       metadata={META_KEY: json.dumps(doc, default=str).encode()})
    return pa.Table.from_arrays(list(columns.values()), schema=schema)


def rows_per_group(features: LayerFeatures) -> int:
    row_bytes = sum(b.shape[1] * b.itemsize for b in features.layers.values()) + 16
    return max(1, min(len(features) or 1, ROW_GROUP_BYTES // row_bytes))


# One PLAIN, uncompressed data page per column chunk: a layer's bytes then sit contiguously
# in the file, so a local reader can map them instead of decoding (see `mapped_read`).
WRITE_OPTIONS = dict(compression="none", use_dictionary=False, write_statistics=False, store_schema=True,
                     data_page_size=1 << 30, max_rows_per_page=(1 << 31) - 1)
MAX_PAGE_HEADER = 64  # bytes; a data page header without statistics is ~25


def read_doc(schema: pa.Schema, key: str) -> dict:
    """The footer document, checked against the schema; raises InvalidFile."""
    raw = (schema.metadata or {}).get(META_KEY)
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
    actual = {f.name: f.type for f in schema}
    if actual != expected:
        raise InvalidFile(f"schema {_short(actual)} does not match its metadata {_short(expected)}")
    return doc


def _short(types: dict) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in list(types.items())[:4]) + (", ..." if len(types) > 4 else "") + "}"


def mapped_read(path: str, md, doc: dict, layers: list[str]) -> LayerFeatures | None:
    """Layers as read-only views of a memory map of a local file, digests checked.

    The Arrow reader copies every page (measured ~2x slower than np.load here); the file
    layout we write keeps each column chunk's values as its last bytes, so they can be
    used in place. Returns None when the file is laid out otherwise or a digest does not
    match: the caller then reads through Arrow, which tells corruption from layout.
    """
    import mmap

    dtype = np.dtype(doc["dtype"]).newbyteorder("<")
    widths = {x["name"]: x["width"] for x in doc["layers"]}
    position = {md.schema.column(i).name: i for i in range(md.num_columns)}
    with open(path, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    sums = doc["checksum"]["columns"]
    out = {}
    for name in [*layers, "label"]:
        dt, width = (dtype, widths[name]) if name != "label" else (np.dtype("<i8"), 1)
        parts = []
        for g in range(md.num_row_groups):
            rows = md.row_group(g).num_rows
            chunk = md.row_group(g).column(position[name])
            nbytes = rows * width * dt.itemsize
            header = chunk.total_compressed_size - nbytes
            if chunk.compression != "UNCOMPRESSED" or chunk.has_dictionary_page or not 0 < header <= MAX_PAGE_HEADER:
                return None
            start = chunk.data_page_offset + header
            if start + nbytes > len(mm):
                return None
            parts.append(np.frombuffer(mm, dt, count=rows * width, offset=start).reshape(rows, width))
        arr = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if digest(arr) != sums.get(name):
            return None
        out[name] = arr
    labels = out.pop("label")[:, 0].copy()
    if len(labels) != doc["n_rows"]:
        return None
    return LayerFeatures(out, labels, {**doc["meta"], "key": doc["key"]})


def from_table(table: pa.Table, doc: dict, layers: list[str]) -> LayerFeatures:
    """Arrow table (the projected columns) -> LayerFeatures; checks row count and digests."""
    n, dtype = doc["n_rows"], np.dtype(doc["dtype"]).newbyteorder("<")
    if table.num_rows != n:
        raise InvalidFile(f"{table.num_rows} rows, metadata says {n}")
    widths = {x["name"]: x["width"] for x in doc["layers"]}
    out = {name: _column(table.column(name), dtype, widths[name]) for name in layers}
    labels = _column(table.column("label"), np.dtype("<i8"), None)
    sums = doc["checksum"]["columns"]
    for name, arr in [*out.items(), ("label", labels)]:
        if digest(arr) != sums.get(name):
            raise InvalidFile(f"checksum mismatch in column {name!r} (corrupted data)")
    return LayerFeatures(out, labels.astype(np.int64, copy=False), {**doc["meta"], "key": doc["key"]})


def _column(col: pa.ChunkedArray, dtype: np.dtype, width: int | None) -> np.ndarray:
    """One column as a numpy array: zero-copy for a single chunk, one copy otherwise."""
    parts = []
    for chunk in col.chunks:
        if chunk.null_count:
            raise InvalidFile("null values in a feature column")
        if width is None:
            parts.append(chunk.to_numpy(zero_copy_only=False).astype(dtype, copy=False))
        else:
            buf = chunk.buffers()[1]
            start = chunk.offset * width * dtype.itemsize
            parts.append(np.frombuffer(buf, dtype=dtype, count=len(chunk) * width, offset=start).reshape(len(chunk), width))
    if width is None:
        return np.concatenate(parts) if len(parts) != 1 else parts[0]
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else np.empty((0, width), dtype)
