"""Decode every image of a user's folder before any compute, once per file version.

`Image.verify()` does not decode JPEG data, so a truncated JPEG used to pass the folder
check and fail mid-extraction. Here each file is fully decoded and converted the way
`load` will convert it, in a thread pool (Pillow's decoders release the GIL). Files that
pass are remembered in a small SQLite file keyed by (path, size, mtime), so a rerun on an
unchanged folder only stats the files. The record is a cache: if it cannot be read or
written, files are simply decoded again.
"""
from __future__ import annotations

import os
import sqlite3
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from head2toe.errors import H2TError

CHECK_CACHE_ENV = "H2T_IMAGE_CHECK_CACHE"
_TABLE = "checked_v1"  # bump when what "passes" means changes


def default_check_cache() -> Path:
    return Path(os.environ.get(CHECK_CACHE_ENV) or "~/.cache/h2t/checked_images.sqlite").expanduser()


def to_rgb8(im: Image.Image) -> np.ndarray:
    """HWC uint8 RGB, with 16-bit and float greyscale scaled to 0..255 rather than clipped.

    16-bit (`I;16*`, and `I` holding 0..65535) maps 65535 to 255; float (`F`) maps [0, 1]
    to 0..255. Values outside those ranges have no one meaning, so they are refused."""
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float32)
        lo, hi = float(np.min(a)), float(np.max(a))
        if not (np.isfinite(lo) and np.isfinite(hi) and lo >= 0 and hi <= 1):
            raise ValueError(f"float image with values in [{lo:g}, {hi:g}]; only [0, 1] is understood: "
                             "scale it to [0, 1] or save it as 8-bit")
        grey = np.rint(a * 255).astype(np.uint8)
    elif im.mode == "I" or im.mode.startswith("I;16"):
        a = np.asarray(im).astype(np.int64)
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 65535:
            raise ValueError(f"integer image with values in [{lo}, {hi}]; only 16-bit (0..65535) is understood: save it as 8- or 16-bit")
        grey = ((a + 128) // 257).astype(np.uint8)
    else:
        return np.array(im.convert("RGB"))  # a writable copy (torch warns on read-only arrays)
    return np.repeat(grey[:, :, None], 3, axis=2)


def problem(path: Path) -> str | None:
    """Why `path` cannot be used as an image (None when it decodes and converts)."""
    try:
        if path.stat().st_size == 0:
            return "empty file"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                to_rgb8(im)
    except Image.DecompressionBombError as e:
        return f"too large to decode safely: {e}".split(" could be decompression bomb")[0]
    except UnidentifiedImageError:
        return "not an image Pillow can read"
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        return f"{type(e).__name__}: {e}"
    except MemoryError:
        return "too large to decode in memory"
    return None


def _stamp(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def _connect(db: Path) -> sqlite3.Connection:
    db.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(db, timeout=10)
    con.execute(f"CREATE TABLE IF NOT EXISTS {_TABLE} (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER)")
    return con


def _known_good(db: Path, stamps: list[tuple[str, int, int]]) -> set[tuple[str, int, int]]:
    try:
        with _connect(db) as con:
            rows = set()
            for i in range(0, len(stamps), 500):
                chunk = [s[0] for s in stamps[i:i + 500]]
                q = f"SELECT path, size, mtime_ns FROM {_TABLE} WHERE path IN ({','.join('?' * len(chunk))})"
                rows.update(con.execute(q, chunk).fetchall())
        return rows
    except (sqlite3.Error, OSError):
        return set()


def _remember(db: Path, stamps: list[tuple[str, int, int]]) -> None:
    try:
        with _connect(db) as con:
            con.executemany(f"INSERT OR REPLACE INTO {_TABLE} VALUES (?, ?, ?)", stamps)
    except (sqlite3.Error, OSError):
        pass


def check_images(paths: list[Path], db: Path | None = None, workers: int | None = None) -> int:
    """Decode every file not already known good; raise one H2TError line naming the bad ones.
    Returns how many files were decoded (0 on a rerun over an unchanged folder)."""
    db = db or default_check_cache()
    stamps = [_stamp(p) for p in paths]
    good = _known_good(db, stamps)
    todo = [(p, s) for p, s in zip(paths, stamps) if s not in good]
    if not todo:
        return 0
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        reasons = list(pool.map(problem, [p for p, _ in todo]))
    _remember(db, [s for (_, s), r in zip(todo, reasons) if r is None])
    bad = [(p, r) for (p, _), r in zip(todo, reasons) if r is not None]
    if bad:
        (path, reason), more = bad[0], len(bad) - 1
        others = f" and {more} more (e.g. {str(bad[1][0])!r})" if more else ""
        raise H2TError(f"unreadable image {str(path)!r} ({reason}){others}; remove or replace it")
    return len(todo)
