"""Where cached splits live: a folder or bucket reached through `pyarrow.fs`.

One code path serves a local folder, an NFS mount, `s3://` and `gs://` (pyarrow resolves the
URI; `s3://bucket/prefix?endpoint_override=host:port&scheme=http` reaches any S3 server).

An entry (one key) is either one file `KEY.parquet`, or, for a split extracted in shards,
parts `KEY.part-00003-of-00008.parquet` plus `KEY.manifest.json`, which lists the parts in
row order and is written last: the entry exists exactly when its single file or its manifest
does. Every file is written to a temporary name and then moved into place (a rename on a
POSIX file system, a server-side copy on object stores), so readers only ever see complete
files and concurrent writers of one key leave one valid file. A file that fails validation
in `load` is reported on the `head2toe.cache` logger, counted in `rejected`, and treated as
missing, so the caller recomputes and overwrites it.
"""
from __future__ import annotations

import json
import logging
import mmap
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from head2toe.cache.format import (
    FORMAT_VERSION, META_KEY, ROW_OVERHEAD, InvalidFile, check_group, check_layers, column_span, footer_doc, group_digests,
    little_endian, mapped_group, read_doc, rows_per_group, table_group, to_features,
)
from head2toe.cache.parquet import CacheParquetWriter
from head2toe.errors import H2TError
from head2toe.features import LayerFeatures

log = logging.getLogger("head2toe.cache")
SUFFIX = ".parquet"
MANIFEST = ".manifest.json"
_READ_ERRORS = (pa.ArrowException, OSError, ValueError, KeyError, TypeError, IndexError)


def default_cache_uri() -> str:
    return os.environ.get("H2T_CACHE") or str(Path("~/.cache/h2t/features").expanduser())


def part_name(key: str, index: int, count: int) -> str:
    return f"{key}.part-{index:05d}-of-{count:05d}{SUFFIX}"


class EntryWriter:
    """Streams one file of an entry: rows arrive batch by batch, a row group is written
    whenever `ROW_GROUP_BYTES` of rows are buffered, and `close` adds the footer and moves the
    temporary file into place. Memory: one row group (less for a split smaller than that)."""

    def __init__(self, cache: "FeatureCache", key: str, final: str, widths: dict[str, int], meta: dict,
                 rows: int | None = None, row_start: int = 0, part: tuple[int, int] | None = None):
        check_layers(widths, cache.dtype)
        self.cache, self.key, self.final, self.widths, self.meta = cache, key, final, dict(widths), meta
        self.row_start, self.part = row_start, part
        self.dtype = np.dtype(cache.dtype).newbyteorder("<")
        self.group_rows = rows_per_group(sum(self.widths.values()) * self.dtype.itemsize + ROW_OVERHEAD, cache.row_group_bytes)
        self.buffer_rows = min(self.group_rows, rows) if rows else self.group_rows
        self.buffers: dict[str, np.ndarray] | None = None
        self.labels = np.empty(0, "<i8")
        self.fill = 0
        self.pending: tuple[dict[str, np.ndarray], np.ndarray] | None = None
        self.rows = 0
        self.groups: list[dict] = []
        name = final.rsplit("/", 1)[-1]
        self.tmp = f"{cache.root}/.tmp-{name}-{uuid.uuid4().hex}{SUFFIX}"
        # a local file is written unbuffered from the numpy buffers (see head2toe.cache.parquet)
        self.sink = open(self.tmp, "wb", buffering=0) if cache.local else cache.fs.open_output_stream(self.tmp)
        self.writer = CacheParquetWriter(self.sink, [*((k, w * self.dtype.itemsize) for k, w in self.widths.items()),
                                                     ("index", None), ("label", None)])

    def write(self, features: LayerFeatures) -> None:
        """Append rows (every layer of the entry, in row order)."""
        if set(features.layers) != set(self.widths):
            raise ValueError(f"rows hold layers {sorted(features.layers)}, the entry has {sorted(self.widths)}")
        blocks = {name: little_endian(features.layers[name].astype(self.dtype, copy=False)) for name in self.widths}
        labels = np.asarray(features.labels).astype("<i8", copy=False)
        if self.pending is not None:  # more rows came after all: the kept tail joins the buffer
            self._append(*self.pending)
            self.pending = None
        n, at = len(labels), 0
        while at < n:
            take = min(n - at, self.group_rows - self.fill)
            part = {k: b[at : at + take] for k, b in blocks.items()}, labels[at : at + take]
            if self.fill == 0 and take == self.group_rows:  # a whole group straight from the caller's block, no copy
                self._write_group(*part)
            elif self.fill == 0 and at + take == n:  # a tail: kept as is, written uncopied if nothing follows
                self.pending = part
            else:
                self._append(*part)
            at += take

    def _append(self, blocks: dict[str, np.ndarray], labels: np.ndarray) -> None:
        """Copy rows into the row-group buffer (never past a whole group); write it when full."""
        take = len(labels)
        if self.buffers is None:
            self.buffers = {k: np.empty((self.buffer_rows, w), self.dtype) for k, w in self.widths.items()}
            self.labels = np.empty(self.buffer_rows, "<i8")
        if self.fill + take > len(self.labels):  # the row hint was low: grow to a whole group
            self.buffers = {k: np.concatenate([b[: self.fill], np.empty((self.group_rows - self.fill, b.shape[1]), b.dtype)])
                            for k, b in self.buffers.items()}
            self.labels = np.concatenate([self.labels[: self.fill], np.empty(self.group_rows - self.fill, "<i8")])
        for k, b in blocks.items():
            self.buffers[k][self.fill : self.fill + take] = b
        self.labels[self.fill : self.fill + take] = labels
        self.fill += take
        if self.fill == self.group_rows:
            self._flush()

    def _flush(self) -> None:
        if self.pending is not None:
            self._write_group(*self.pending)
            self.pending = None
        if self.fill:
            self._write_group({k: b[: self.fill] for k, b in self.buffers.items()}, self.labels[: self.fill])
            self.fill = 0

    def _write_group(self, blocks: dict[str, np.ndarray], labels: np.ndarray) -> None:
        index = np.arange(self.row_start + self.rows, self.row_start + self.rows + len(labels), dtype="<i8")
        columns = {**blocks, "index": index, "label": labels}
        self.groups.append(group_digests(columns))
        self.writer.write_row_group(list(columns.values()))
        self.rows += len(labels)

    def close(self) -> None:
        """Write the last row group and the footer, then publish the file under its final name."""
        try:
            self._flush()
            self.writer.close({META_KEY: footer_doc(self.key, self.widths, self.cache.dtype, self.meta, self.row_start,
                                                    self.groups, self.part)})
            self.sink.close()
            self.cache.fs.move(self.tmp, self.final)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop the temporary file (nothing becomes visible)."""
        try:
            self.sink.close()
        except (pa.ArrowException, OSError, ValueError):
            pass
        try:
            self.cache.fs.delete_file(self.tmp)
        except (pa.ArrowException, OSError):
            pass

    def __enter__(self) -> "EntryWriter":
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


class FeatureCache:
    """A `FeatureStore` (see head2toe.provider) backed by Parquet files (one or more per key)."""

    def __init__(self, uri: str | None = None, dtype: str = "float16", row_group_bytes: int | None = None):
        self.uri = uri or default_cache_uri()
        self.dtype = dtype
        self.row_group_bytes = row_group_bytes  # None: head2toe.cache.format.ROW_GROUP_BYTES
        self.rejected: list[tuple[str, str]] = []  # (path, reason) of files refused
        self.fs, self.root = _resolve(self.uri)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        try:
            self.fs.create_dir(self.root, recursive=True)
        except (pa.ArrowException, OSError) as e:
            raise H2TError(f"cannot open feature cache {self.uri!r}: {e}; pass --cache with a writable folder or bucket URI") from None

    def path(self, key: str) -> str:
        """The single file of an entry written in one piece."""
        return f"{self.root}/{key}{SUFFIX}"

    def manifest_path(self, key: str) -> str:
        return f"{self.root}/{key}{MANIFEST}"

    def part_path(self, key: str, index: int, count: int) -> str:
        return f"{self.root}/{part_name(key, index, count)}"

    def __repr__(self) -> str:
        return f"FeatureCache({self.uri!r}, dtype={self.dtype!r})"

    # --- reading -------------------------------------------------------------------------

    def load(self, key: str, layers: list[str] | None = None) -> LayerFeatures | None:
        """The stored features of `key` (only `layers` when given; every part of a sharded
        entry, in row order), or None when absent or invalid.

        Every row group read is checked against its digests. A local single-file entry of one
        row group comes back as read-only views of a memory map (no copy); more row groups or
        parts are concatenated (one copy); other storage is read through Arrow."""
        try:
            files, entry = self._entry(key)
        except FileNotFoundError:
            return None
        except InvalidFile as e:
            return self._reject(self.manifest_path(key), str(e))
        blocks: list[dict[str, np.ndarray]] = []
        wanted = None
        for i, path in enumerate(files):
            try:
                with self._open(path) as f:
                    pf = pq.ParquetFile(f, pre_buffer=not self.local)
                    doc = self._check_doc(pf, key, entry, i)
                    wanted = _wanted(doc, layers)
                    blocks += self._read_file(path, pf, doc, wanted)
            except FileNotFoundError:
                return self._reject(path, "missing part of a sharded entry") if entry else None
            except InvalidFile as e:
                return self._reject(path, str(e))
            except _READ_ERRORS as e:
                return self._reject(path, f"unreadable ({type(e).__name__}: {e}); truncated, corrupted or not Parquet")
        if not blocks:  # an empty split
            widths = {x["name"]: x["width"] for x in doc["layers"]}
            blocks = [{**{n: np.empty((0, widths[n]), np.dtype(doc["dtype"])) for n in wanted}, "label": np.empty((0, 1), "<i8")}]
        arrays = {name: blocks[0][name] if len(blocks) == 1 else np.concatenate([b[name] for b in blocks])
                  for name in [*wanted, "label"]}
        return to_features(arrays, doc)

    def iter_rows(self, key: str, layers: list[str] | None = None) -> Iterator[LayerFeatures]:
        """The entry's rows in order, one row group at a time (part by part), each chunk's
        digests checked before it is yielded; `meta["row_start"]` is its first row.

        Memory: one row group. Raises FileNotFoundError when the entry is absent and
        InvalidFile (message: the file, then the reason) on bad data."""
        try:
            files, entry = self._entry(key)
        except InvalidFile as e:
            raise InvalidFile(f"{self.manifest_path(key)}: {e}") from None
        for i, path in enumerate(files):
            try:
                with self._open(path, mapped=False) as f:
                    pf = pq.ParquetFile(f)
                    doc = self._check_doc(pf, key, entry, i)
                    wanted = _wanted(doc, layers)
                    start = doc["row_start"]
                    for g in range(pf.metadata.num_row_groups):
                        arrays = self._read_group(path, pf, doc, g, wanted)
                        reason = check_group(arrays, doc, g)
                        if reason:
                            raise InvalidFile(reason)
                        yield to_features(arrays, doc, row_start=start)
                        start += len(arrays["label"])
            except FileNotFoundError:
                if entry:
                    raise InvalidFile(f"{path}: missing part of a sharded entry") from None
                raise
            except InvalidFile as e:
                raise InvalidFile(f"{path}: {e}") from None
            except _READ_ERRORS as e:
                raise InvalidFile(f"{path}: unreadable ({type(e).__name__}: {e}); truncated, corrupted or not Parquet") from None

    def entry_files(self, key: str) -> list[str]:
        """Paths relative to the cache root of every file of the entry (manifest first, then
        parts in row order); copying exactly these into another root gives the same entry."""
        files, entry = self._entry(key)
        rel = [p[len(self.root) + 1 :] for p in files]
        return [f"{key}{MANIFEST}", *rel] if entry else rel

    def entry_bytes(self, key: str, layers: list[str] | None = None) -> int:
        """Bytes of the entry's `layers` columns (all layers when None), from its metadata."""
        doc = self.read_meta(key)
        item = np.dtype(doc["dtype"]).itemsize
        widths = {x["name"]: x["width"] for x in doc["layers"]}
        names = list(widths) if layers is None else list(layers)
        missing = [n for n in names if n not in widths]
        if missing:
            raise KeyError(f"layers not in entry {key}: {missing}")
        return doc["n_rows"] * item * sum(widths[n] for n in names)

    def contains(self, key: str, verify_data: bool = True) -> bool:
        """Whether a valid entry holds `key` (footers and schema; every row group's digests
        with verify_data, streamed: memory of one row group)."""
        try:
            if verify_data:
                for _ in self.iter_rows(key):
                    pass
            else:
                files, entry = self._entry(key)
                for i, path in enumerate(files):
                    with self._open(path) as f:
                        self._check_doc(pq.ParquetFile(f), key, entry, i)
            return True
        except FileNotFoundError:
            return False
        except InvalidFile as e:
            path, _, reason = str(e).partition(": ")
            self._reject(path, reason)
        except _READ_ERRORS as e:
            self._reject(self.path(key), f"unreadable ({type(e).__name__}: {e}); truncated, corrupted or not Parquet")
        return False

    def read_meta(self, key: str) -> dict:
        """The entry's document: a single file's footer, or a sharded entry's manifest
        (raises InvalidFile or FileNotFoundError)."""
        files, entry = self._entry(key)
        if entry:
            return entry
        with self._open(files[0]) as f:
            pf = pq.ParquetFile(f)
            return read_doc(pf.metadata, pf.schema_arrow, key)

    def size(self, key: str) -> int | None:
        """Bytes on storage of every file of the entry; None when absent."""
        try:
            names = self.entry_files(key)
        except (FileNotFoundError, InvalidFile):
            return None
        return sum(self.fs.get_file_info(f"{self.root}/{n}").size or 0 for n in names)

    # --- writing -------------------------------------------------------------------------

    def writer(self, key: str, widths: dict[str, int], meta: dict, rows: int | None = None,
               part: tuple[int, int] | None = None, row_start: int = 0) -> EntryWriter:
        """A streaming writer of the entry's single file, or of part `part = (index, count)`
        (rows from `row_start`); use as a context manager (an exception leaves nothing)."""
        final = self.path(key) if part is None else self.part_path(key, *part)
        return EntryWriter(self, key, final, widths, meta, rows=rows, row_start=row_start, part=part)

    def save(self, key: str, features: LayerFeatures, meta: dict) -> None:
        """Write a whole in-memory split as one file, atomically."""
        with self.writer(key, features.widths, meta, rows=len(features)) as w:
            w.write(features)

    def part_valid(self, key: str, index: int, count: int) -> bool:
        """Whether part `index` of `count` is there with every digest right (streamed)."""
        path = self.part_path(key, index, count)
        try:
            with self._open(path, mapped=False) as f:
                pf = pq.ParquetFile(f)
                doc = read_doc(pf.metadata, pf.schema_arrow, key)
                if doc.get("part") != {"index": index, "count": count}:
                    raise InvalidFile(f"holds part {doc.get('part')}, not {index} of {count}")
                for g in range(pf.metadata.num_row_groups):
                    reason = check_group(self._read_group(path, pf, doc, g, [x["name"] for x in doc["layers"]]), doc, g)
                    if reason:
                        raise InvalidFile(reason)
            return True
        except FileNotFoundError:
            return False
        except InvalidFile as e:
            self._reject(path, str(e))
        except _READ_ERRORS as e:
            self._reject(path, f"unreadable ({type(e).__name__}: {e}); truncated, corrupted or not Parquet")
        return False

    def publish_parts(self, key: str, count: int) -> dict:
        """Write the manifest of a sharded entry once all `count` parts are there (from their
        footers only, no feature bytes read); the entry becomes visible with it."""
        parts, first = [], None
        for i in range(count):
            path = self.part_path(key, i, count)
            with self._open(path) as f:
                pf = pq.ParquetFile(f)
                doc = read_doc(pf.metadata, pf.schema_arrow, key)
            expect = parts[-1]["row_start"] + parts[-1]["rows"] if parts else 0
            if doc.get("part") != {"index": i, "count": count} or doc["row_start"] != expect:
                raise InvalidFile(f"{path}: holds part {doc.get('part')} from row {doc['row_start']}, not {i} of {count} from {expect}")
            first = first or doc
            parts.append({"file": part_name(key, i, count), "row_start": doc["row_start"], "rows": doc["n_rows"]})
        manifest = {"format_version": FORMAT_VERSION, "key": key, "dtype": first["dtype"], "n_rows": sum(p["rows"] for p in parts),
                    "layers": first["layers"], "meta": first["meta"], "parts": parts}
        tmp = f"{self.root}/.tmp-{key}-{uuid.uuid4().hex}{MANIFEST}"
        with self.fs.open_output_stream(tmp) as sink:
            sink.write(json.dumps(manifest, default=str).encode())
        self.fs.move(tmp, self.manifest_path(key))
        return manifest

    def free_bytes(self) -> int | None:
        """Free space where the files go, when the storage can tell (local folders and mounts)."""
        return shutil.disk_usage(self.root).free if self.local else None

    # --- internals -----------------------------------------------------------------------

    def _entry(self, key: str) -> tuple[list[str], dict | None]:
        """(files in row order, manifest or None); FileNotFoundError when the key has no entry."""
        single = self.path(key)
        if self.fs.get_file_info(single).type == pafs.FileType.File:
            return [single], None
        try:
            with self.fs.open_input_stream(self.manifest_path(key)) as f:
                raw = f.read()
        except (FileNotFoundError, pa.ArrowException, OSError):
            if self.fs.get_file_info(self.manifest_path(key)).type == pafs.FileType.NotFound:
                raise FileNotFoundError(single) from None
            raise
        try:
            manifest = json.loads(raw)
            if manifest.get("format_version") != FORMAT_VERSION:
                raise InvalidFile(f"manifest format version {manifest.get('format_version')!r}, this code reads {FORMAT_VERSION}")
            if manifest.get("key") != key:
                raise InvalidFile(f"manifest holds key {manifest.get('key')!r}, not {key!r}")
            return [f"{self.root}/{p['file']}" for p in manifest["parts"]], manifest
        except (ValueError, KeyError, TypeError) as e:
            raise InvalidFile(f"unreadable manifest ({type(e).__name__}: {e})") from None

    def _check_doc(self, pf: pq.ParquetFile, key: str, entry: dict | None, index: int) -> dict:
        doc = read_doc(pf.metadata, pf.schema_arrow, key)
        if entry is not None:
            p = entry["parts"][index]
            part = doc.get("part") or {}
            if part.get("index") != index or doc["row_start"] != p["row_start"] or doc["n_rows"] != p["rows"]:
                raise InvalidFile(f"holds part {doc.get('part')} of rows {doc['row_start']}+{doc['n_rows']}, "
                                  f"the manifest lists part {index} of rows {p['row_start']}+{p['rows']}")
        return doc

    def _read_file(self, path: str, pf: pq.ParquetFile, doc: dict, names: list[str]) -> list[dict[str, np.ndarray]]:
        """Every row group of one file, digests checked: views of a memory map locally when
        the layout allows, else through Arrow (which also tells corruption from layout)."""
        md = pf.metadata
        if self.local:
            with open(path, "rb") as fh:
                mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            groups = [mapped_group(mm, md, doc, g, names) for g in range(md.num_row_groups)]
            if all(g is not None for g in groups) and not any(check_group(a, doc, g) for g, a in enumerate(groups)):
                return groups
        table = pf.read(columns=[*names, "label"], use_threads=True)
        arrays = table_group(table, doc, names)
        out, at = [], 0
        for g in range(md.num_row_groups):
            n = md.row_group(g).num_rows
            group = {k: a[at : at + n] for k, a in arrays.items()}
            reason = check_group(group, doc, g)
            if reason:
                raise InvalidFile(reason)
            out.append(group)
            at += n
        return out

    def _read_group(self, path: str, pf: pq.ParquetFile, doc: dict, g: int, names: list[str]) -> dict[str, np.ndarray]:
        """One row group's columns (+ label), owned by the caller: locally a plain read of
        each column's bytes, else through Arrow."""
        md = pf.metadata
        if self.local:
            dtype = np.dtype(doc["dtype"]).newbyteorder("<")
            widths = {x["name"]: x["width"] for x in doc["layers"]}
            position = {md.schema.column(i).name: i for i in range(md.num_columns)}
            rows = md.row_group(g).num_rows
            out = {}
            with open(path, "rb") as fh:
                for name in [*names, "label"]:
                    dt, width = (dtype, widths[name]) if name != "label" else (np.dtype("<i8"), 1)
                    span = column_span(md, doc, g, position[name], width, dt.itemsize)
                    if span is None:
                        break
                    arr = np.empty((rows, width), dt)
                    fh.seek(span[0])
                    if fh.readinto(memoryview(arr).cast("B")) != span[1]:
                        raise InvalidFile(f"row group {g} ends past the end of the file (truncated)")
                    out[name] = arr
                else:
                    return out
        return table_group(pf.read_row_group(g, columns=[*names, "label"]), doc, names)

    def _open(self, path: str, mapped: bool = True) -> pa.NativeFile:
        """Local files are memory-mapped (for `load`: Arrow then reads pages straight from the
        page cache); files are replaced by rename, never rewritten in place, so a mapping
        always sees one complete file."""
        if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
            raise FileNotFoundError(path)
        if self.local:
            return pa.memory_map(path, "r") if mapped else pa.OSFile(path, "r")
        return self.fs.open_input_file(path)

    def _reject(self, path: str, reason: str) -> None:
        self.rejected.append((path, reason))
        log.warning("feature cache: ignoring %s (%s); it will be recomputed", path, reason)
        return None


def _wanted(doc: dict, layers: list[str] | None) -> list[str]:
    names = [x["name"] for x in doc["layers"]]
    wanted = names if layers is None else list(layers)
    missing = [n for n in wanted if n not in names]
    if missing:
        raise InvalidFile(f"lacks layers {missing}")
    return wanted


def _resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, root path) for a folder path or any URI pyarrow knows (file, s3, gs, hdfs)."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowException, ValueError) as e:
        raise H2TError(f"cannot open feature cache {uri!r}: {e}; use a folder path, s3://bucket/prefix or gs://bucket/prefix") from None
    return fs, path.rstrip("/")


def open_cache(uri: str | None = None, dtype: str = "float16", row_group_bytes: int | None = None) -> FeatureCache:
    """The cache at `uri` (default $H2T_CACHE, else ~/.cache/h2t/features); `row_group_bytes`
    sets what its writers put in one row group (default ROW_GROUP_BYTES)."""
    return FeatureCache(uri, dtype=dtype, row_group_bytes=row_group_bytes)
