"""Images of a tfds split read by random access, decoded in parallel and on demand.

Big test splits (tens of thousands of images) are never held in memory: the sequence keeps
only (split, index) ranges. A slice decodes its images on a thread pool (PIL releases the
GIL) and starts decoding the next slice of the same length, so decoding overlaps with the
caller's backbone forward. Pickles as its description: worker processes reopen the files.
"""
from __future__ import annotations

import bisect
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from typing import Any, Callable, Sequence

import numpy as np

_CHUNK = 1024  # examples per label-pass submission: bounds decoded images in flight


def decode_threads() -> int:
    """$H2T_DECODE_THREADS, else one per core (at most 32)."""
    return int(os.environ.get("H2T_DECODE_THREADS") or min(32, os.cpu_count() or 1))


@lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=decode_threads(), thread_name_prefix="h2t-decode")


class LazyRecords(Sequence):
    """uint8 HWC images of the concatenated ranges `parts` = [(split, start, stop), ...]
    of tfds dataset `name` ("clevr:3.1.0"); `image_fn` post-processes each image."""

    def __init__(self, data_dir: str, name: str, parts: list[tuple[str, int, int]],
                 image_fn: Callable[[np.ndarray], np.ndarray] | None = None):
        self.data_dir, self.name, self.parts, self.image_fn = data_dir, name, list(parts), image_fn
        self._ends = np.cumsum([b - a for _, a, b in self.parts]).tolist()
        self._ahead: tuple[tuple[int, int], list[Future]] | None = None
        self._sources: dict[str, Sequence[dict]] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"data_dir": self.data_dir, "name": self.name, "parts": self.parts, "image_fn": self.image_fn}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def _locate(self, i: int) -> tuple[str, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        k = bisect.bisect_right(self._ends, i)
        split, start, _ = self.parts[k]
        return split, start + i - (self._ends[k - 1] if k else 0)

    def _source(self, split: str) -> Sequence[dict]:
        with self._lock:  # decode threads ask at once; open each split once
            if split not in self._sources:
                import tensorflow_datasets as tfds

                self._sources[split] = tfds.data_source(self.name, split=split, data_dir=self.data_dir, download=False)
            return self._sources[split]

    def example(self, i: int) -> dict[str, Any]:
        """The decoded tfds example behind image `i`."""
        split, j = self._locate(i)
        return self._source(split)[j]

    def _image(self, i: int) -> np.ndarray:
        image = np.asarray(self.example(i)["image"])
        if self.image_fn:
            return self.image_fn(image)
        return image if image.flags.writeable else image.copy()  # torch warns on read-only arrays

    def _submit(self, start: int, stop: int) -> list[Future]:
        return [_pool().submit(self._image, i) for i in range(start, stop)]

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                return self[list(range(start, stop, step))]
            return self._read(start, stop)
        if isinstance(i, (list, np.ndarray)):
            return [f.result() for f in [_pool().submit(self._image, int(k)) for k in i]]
        i = int(i)
        return self._image(i + len(self) if i < 0 else i)

    def _read(self, start: int, stop: int) -> list[np.ndarray]:
        ahead, self._ahead = self._ahead, None
        futures = ahead[1] if ahead and ahead[0] == (start, stop) else self._submit(start, stop)
        nxt = (stop, min(len(self), 2 * stop - start))
        if nxt[0] < nxt[1]:
            self._ahead = (nxt, self._submit(*nxt))
        return [f.result() for f in futures]

    def labels(self, label_fn: Callable[[dict], int]) -> np.ndarray:
        """label_fn over every example, in parallel (one pass over the records)."""
        def one(i: int) -> int:
            return label_fn(self.example(i))

        out = np.empty(len(self), np.int64)
        for start in range(0, len(self), _CHUNK):
            stop = min(len(self), start + _CHUNK)
            out[start:stop] = list(_pool().map(one, range(start, stop)))
        return out
