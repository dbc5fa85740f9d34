"""Per-layer feature blocks: the in-memory form of one split of one cached extraction."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch

from head2toe.errors import H2TError
from head2toe.normalize import unit_normalize


@dataclass
class LayerFeatures:
    """Pooled activations of one split: `layers[name]` is (N, d_name); rows align with `labels`.

    Stored un-normalised (float16 or float32); normalisation happens in `matrix`, per layer,
    so the same blocks serve both the all-features probe and the re-normalised selection.
    """

    layers: dict[str, np.ndarray]
    labels: np.ndarray
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.labels)
        for name, block in self.layers.items():
            if block.ndim != 2 or block.shape[0] != n:
                raise ValueError(f"layer {name!r} has shape {block.shape}; expected ({n}, d)")

    @property
    def layer_names(self) -> list[str]:
        return list(self.layers)

    @property
    def widths(self) -> dict[str, int]:
        return {k: v.shape[1] for k, v in self.layers.items()}

    @property
    def n_features(self) -> int:
        return sum(self.widths.values())

    def __len__(self) -> int:
        return len(self.labels)

    def rows(self, idx: np.ndarray) -> "LayerFeatures":
        return LayerFeatures({k: v[idx] for k, v in self.layers.items()}, self.labels[idx], self.meta)

    def subset(self, names: list[str]) -> "LayerFeatures":
        missing = [n for n in names if n not in self.layers]
        if missing:
            raise KeyError(f"layers not available: {missing}; have {self.layer_names}")
        return LayerFeatures({n: self.layers[n] for n in names}, self.labels, self.meta)

    def _where(self) -> str:
        parts = [f"{k} {self.meta[k]}" for k in ("task", "split", "target_size") if k in self.meta]
        key = f" (cache key {self.meta['key']})" if self.meta.get("key") else ""
        return (" in " + ", ".join(parts) if parts else "") + key

    def check_finite(self) -> None:
        """Refuse NaN/Inf before a probe silently learns nothing; names the layer."""
        for name, block in self.layers.items():
            if not np.isfinite(block).all():
                bad = int((~np.isfinite(block)).any(axis=1).sum())
                raise H2TError(f"features of layer {name!r} hold NaN/Inf in {bad} of {len(block)} rows{self._where()}; "
                               "the backbone or its input produced them: check the weights and images, then re-extract")

    def check_labels(self, num_classes: int) -> None:
        """Refuse labels outside 0..num_classes-1 (a foreign or damaged feature file), which the
        loss would otherwise meet as an index error (CPU) or a device-side assert (GPU)."""
        bad = (self.labels < 0) | (self.labels >= num_classes)
        if bad.any():
            raise H2TError(f"labels out of range: {int(bad.sum())} of {len(self.labels)} rows hold labels "
                           f"{sorted(set(self.labels[bad].tolist()))[:5]} outside 0..{num_classes - 1}{self._where()}; "
                           "the features do not belong to this task: delete that cache file to re-extract")

    def matrix(self, kept: dict[str, np.ndarray] | None = None, rows: np.ndarray | None = None) -> torch.Tensor:
        """h_all: every layer (or only its `kept` columns) unit-normalised, then concatenated, as
        float32; only `rows` when given. Normalisation is per row, so a matrix of some rows equals
        those rows of the whole one, and a chunk of a split is scored exactly. Kept columns of
        some rows are gathered straight from the stored blocks (one small copy, never a whole block)."""
        blocks = []
        for name, block in self.layers.items():
            if kept is not None:
                if name not in kept or len(kept[name]) == 0:
                    continue
                block = block[np.ix_(rows, kept[name])] if rows is not None else block[:, kept[name]]
            elif rows is not None:
                block = block[rows]
            blocks.append(torch.from_numpy(unit_normalize(np.asarray(block))))
        if not blocks:
            return torch.zeros(len(self) if rows is None else len(rows), 0)
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)


def layer_columns(x: torch.Tensor, widths: dict[str, int], names: list[str]) -> torch.Tensor:
    """The columns of `names` in a matrix laid out by `widths` (`LayerFeatures.matrix()`): a view
    for one layer or a run of adjacent ones, so a method reading fewer layers shares the matrix."""
    if list(widths) == list(names):
        return x
    starts, start = {}, 0
    for name, w in widths.items():
        starts[name], start = start, start + w
    parts = [x[:, starts[n]:starts[n] + widths[n]] for n in names]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


@dataclass
class NormalizedFeatures:
    """A split's layers as one float32 matrix, each layer's block unit-normalised per row: what
    probes train on, built once (chunk by chunk from the cache, so nothing else of the split is
    held) and shared by every fold, hp and method of a trial. Same interface as `LayerFeatures`
    where probes need it; `matrix(kept, rows)` re-normalises the kept columns of each layer
    (Head2Toe's second stage): a normalised block is the raw one scaled per row, so this equals
    re-normalising the raw kept columns (to float32 rounding)."""

    x: torch.Tensor  # (N, sum of widths), float32
    widths: dict[str, int]  # layer -> columns, in the order of x
    labels: np.ndarray
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_chunks(cls, chunks: Iterable[LayerFeatures], n_rows: int, widths: dict[str, int]) -> "NormalizedFeatures":
        """Fill the matrix from row chunks in order (memory: the matrix, one chunk, one layer's
        block of it in float32)."""
        x = torch.empty(n_rows, sum(widths.values()))
        labels = np.empty(n_rows, dtype=np.int64)
        start, meta = 0, {}
        for chunk in chunks:
            if chunk.widths != widths:
                raise ValueError(f"chunk layers {list(chunk.widths)[:3]}... do not match {list(widths)[:3]}...")
            stop = start + len(chunk)
            if stop > n_rows:
                raise ValueError(f"chunks hold more than the {n_rows} rows expected")
            col = 0
            for name, block in chunk.layers.items():  # layer by layer: the only temporary is one block
                x[start:stop, col:col + block.shape[1]] = torch.from_numpy(unit_normalize(np.asarray(block)))
                col += block.shape[1]
            labels[start:stop] = chunk.labels
            start, meta = stop, meta or {k: v for k, v in chunk.meta.items() if k != "row_start"}
        if start != n_rows:
            raise ValueError(f"chunks hold {start} rows, expected {n_rows}")
        return cls(x, dict(widths), labels, meta)

    @property
    def layer_names(self) -> list[str]:
        return list(self.widths)

    @property
    def n_features(self) -> int:
        return sum(self.widths.values())

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, names: list[str]) -> "NormalizedFeatures":
        missing = [n for n in names if n not in self.widths]
        if missing:
            raise KeyError(f"layers not available: {missing}; have {self.layer_names}")
        return NormalizedFeatures(layer_columns(self.x, self.widths, names), {n: self.widths[n] for n in names}, self.labels, self.meta)

    def matrix(self, kept: dict[str, np.ndarray] | None = None, rows: np.ndarray | None = None) -> torch.Tensor:
        if kept is None:
            return self.x if rows is None else self.x[torch.as_tensor(rows)]
        r = torch.arange(len(self)) if rows is None else torch.as_tensor(rows)
        blocks, start = [], 0
        for name, w in self.widths.items():
            if name in kept and len(kept[name]):
                cols = torch.as_tensor(np.asarray(kept[name]) + start)
                blocks.append(unit_normalize(self.x[r[:, None], cols[None, :]]))
            start += w
        if not blocks:
            return torch.zeros(len(r), 0)
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)
