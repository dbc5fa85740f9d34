"""A minimal Parquet writer for the one layout the cache writes: required FIXED_LEN_BYTE_ARRAY
(a layer's rows as raw bytes) and INT64 columns, PLAIN, uncompressed, no statistics, one data
page per column chunk, row group by row group.

Why not `pyarrow.parquet.ParquetWriter`: it copies every page through its encoder buffer and
a page concatenation before the sink sees it, which measured 0.18x the rate of `np.save` of
the same bytes (benchmarks/bench_cache.py). Here each column's numpy buffer goes to the
sink as it is (the one copy `np.save` makes), with a ~30-byte page header before it; the
footer is Thrift compact protocol, written by hand below. On a local file each row group's
extent is reserved first (`posix_fallocate`, as `ndarray.tofile` does): without it, ext4's
per-page delayed allocation made the same writes ~2x slower here. Files are standard
Parquet (Arrow reads them; tests/test_cache.py reads them with `pyarrow.parquet`).
"""
from __future__ import annotations

import io
import os
import struct

import numpy as np

MAGIC = b"PAR1"
INT64, FIXED_LEN_BYTE_ARRAY = 2, 7  # parquet.thrift Type
REQUIRED = 0  # FieldRepetitionType
PLAIN, UNCOMPRESSED, DATA_PAGE = 0, 0, 0
MAX_PAGE = (1 << 31) - 1  # page sizes are int32
_I16, _I32, _I64, _BINARY, _LIST, _STRUCT = 4, 5, 6, 8, 9, 12


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _zigzag(n: int) -> bytes:
    return _varint((n << 1) ^ (n >> 63))


class _Struct:
    """Thrift compact-protocol struct encoder (the subset parquet.thrift needs)."""

    def __init__(self):
        self.buf = bytearray()
        self.last = 0

    def _field(self, fid: int, ftype: int) -> None:
        delta = fid - self.last
        if 0 < delta <= 15:
            self.buf.append((delta << 4) | ftype)
        else:
            self.buf.append(ftype)
            self.buf += _zigzag(fid)
        self.last = fid

    def int(self, fid: int, value: int, ftype: int = _I32) -> "_Struct":
        self._field(fid, ftype)
        self.buf += _zigzag(value)
        return self

    def i64(self, fid: int, value: int) -> "_Struct":
        return self.int(fid, value, _I64)

    def str(self, fid: int, value: str | bytes) -> "_Struct":
        raw = value.encode() if isinstance(value, str) else value
        self._field(fid, _BINARY)
        self.buf += _varint(len(raw)) + raw
        return self

    def struct(self, fid: int, value: "_Struct") -> "_Struct":
        self._field(fid, _STRUCT)
        self.buf += value.end()
        return self

    def list(self, fid: int, etype: int, items: list) -> "_Struct":
        self._field(fid, _LIST)
        n = len(items)
        self.buf += bytes([(n << 4) | etype]) if n < 15 else bytes([0xF0 | etype]) + _varint(n)
        for item in items:
            if etype == _STRUCT:
                self.buf += item.end()
            elif etype == _BINARY:
                raw = item.encode() if isinstance(item, str) else item
                self.buf += _varint(len(raw)) + raw
            else:
                self.buf += _zigzag(item)
        return self

    def end(self) -> bytes:
        return bytes(self.buf) + b"\x00"


class CacheParquetWriter:
    """Writes row groups of numpy column buffers to a `pyarrow` output stream, then the footer."""

    def __init__(self, sink, columns: list[tuple[str, int | None]]):
        """`sink`: a pyarrow output stream or an unbuffered local file (then extents are reserved);
        `columns`: (name, byte width) for FIXED_LEN_BYTE_ARRAY columns, (name, None) for INT64."""
        self.sink, self.columns = sink, columns
        self.fileno = sink.fileno() if isinstance(sink, io.FileIO) else None
        self.offset = 0
        self.row_groups: list[_Struct] = []
        self.rows = 0
        self._write(MAGIC)

    def _write(self, data) -> None:
        self._write_all([data])

    def _write_all(self, buffers: list) -> None:
        """Buffers in order: one writev per ~1000 on a local file (a raw file may take less than asked)."""
        views = [memoryview(b).cast("B") for b in buffers]
        size = sum(v.nbytes for v in views)
        if self.fileno is None:
            for v in views:
                self.sink.write(v)
        else:
            while views:
                done = os.writev(self.fileno, views[:1000])
                while views and done >= views[0].nbytes:
                    done -= views.pop(0).nbytes
                if views and done:
                    views[0] = views[0][done:]
        self.offset += size

    def write_row_group(self, arrays: list[np.ndarray]) -> None:
        """One array per column, in column order: contiguous, little-endian, equal row counts."""
        rows = len(arrays[0])
        pages = []
        for (name, width), arr in zip(self.columns, arrays):
            if len(arr) != rows:
                raise ValueError(f"column {name!r} has {len(arr)} rows, the row group {rows}")
            data = memoryview(np.ascontiguousarray(arr)).cast("B")
            if data.nbytes != rows * (width or 8):
                raise ValueError(f"column {name!r} holds {data.nbytes} bytes, expected {rows} x {width or 8}")
            if data.nbytes > MAX_PAGE:
                raise ValueError(f"column {name!r} of one row group is {data.nbytes} bytes; Parquet pages stop at 2 GiB")
            header = (_Struct().int(1, DATA_PAGE).int(2, data.nbytes).int(3, data.nbytes)
                      .struct(5, _Struct().int(1, rows).int(2, PLAIN).int(3, PLAIN).int(4, PLAIN))).end()
            pages.append((header, data))
        chunks, group_start, at = [], self.offset, self.offset
        for (name, width), (page, data) in zip(self.columns, pages):
            size = len(page) + data.nbytes
            meta = (_Struct().int(1, FIXED_LEN_BYTE_ARRAY if width else INT64).list(2, _I32, [PLAIN]).list(3, _BINARY, [name])
                    .int(4, UNCOMPRESSED).i64(5, rows).i64(6, size).i64(7, size).i64(9, at))
            chunks.append(_Struct().i64(2, at).struct(3, meta))
            at += size
        total = at - group_start
        if self.fileno is not None:
            os.posix_fallocate(self.fileno, self.offset, total)
        self._write_all([b for page in pages for b in page])
        self.row_groups.append(_Struct().list(1, _STRUCT, chunks).i64(2, total).i64(3, rows).i64(5, group_start)
                               .i64(6, total).int(7, len(self.row_groups), _I16))
        self.rows += rows

    def close(self, key_value: dict[bytes, bytes]) -> None:
        """The footer (schema, row groups, `key_value` metadata) and the closing magic."""
        schema = [_Struct().str(4, "schema").int(5, len(self.columns))]
        for name, width in self.columns:
            el = _Struct().int(1, FIXED_LEN_BYTE_ARRAY if width else INT64)
            if width:
                el.int(2, width)
            schema.append(el.int(3, REQUIRED).str(4, name))
        kv = [_Struct().str(1, k).str(2, v) for k, v in key_value.items()]
        footer = (_Struct().int(1, 1).list(2, _STRUCT, schema).i64(3, self.rows).list(4, _STRUCT, self.row_groups)
                  .list(5, _STRUCT, kv).str(6, "head2toe feature cache")).end()
        self._write(footer)
        self._write(struct.pack("<I", len(footer)) + MAGIC)
