"""One backbone forward per image: every tap pooled to every requested target size.

The paper sweeps target sizes; pooling is cheap next to the forward pass, so all target
sizes come out of one pass. Outputs are raw pooled activations (float16 by default);
normalisation happens at use time. `iter_features` yields them batch by batch (what the
cache writer and streamed test evaluation consume: memory of one batch; each tap is pooled
inside its forward hook, so not even a batch holds every tap's activation); `extract_features`
collects them for small in-memory uses.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from head2toe.backbones import Backbone
from head2toe.features import LayerFeatures
from head2toe.pooling import pool_to_target, pooled_size
from head2toe.preprocess import batches, to_input
from head2toe.tasks.base import ImageSplit


PRECISIONS = ("fp32", "bf16")


def default_precision(device: torch.device) -> str:
    """bf16 on CUDA (the norm there); fp32 on CPU: bf16 autocast runs EfficientNet-Lite0
    only 1.05-1.2x faster on this avx512_bf16 CPU but moves its unit-normalised pooled features by
    up to ~9 % (benchmarks/bench_extract.py), not shown harmless to the probes."""
    return "bf16" if device.type == "cuda" else "fp32"


def _autocast(device: torch.device, precision: str):
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_for_inference(backbone: Backbone, channels_last: bool = True) -> None:
    """Put the backbone's weights in the memory format its forward runs fastest in:
    channels_last lets oneDNN (CPU) and cuDNN run convolutions and depthwise convolutions
    without layout reorders (EfficientNet-Lite0 ~1.5-2x on CPU, benchmarks/bench_extract.py).
    Same arithmetic up to float rounding; idempotent."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    backbone.model.to(memory_format=fmt)


class RowRange(Sequence):
    """Rows [start, stop) of a (possibly lazy) image sequence, still lazy: a shard of a split
    decodes only its own images, batch by batch."""

    def __init__(self, images: Sequence[np.ndarray] | np.ndarray, start: int, stop: int):
        self.images, self.start, self.stop = images, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i):
        if isinstance(i, slice):
            a, b, step = i.indices(len(self))
            if step != 1:
                raise ValueError("RowRange slices take step 1")
            return self.images[self.start + a : self.start + b]
        i = int(i) + (len(self) if int(i) < 0 else 0)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.images[self.start + i]


def row_range(data: ImageSplit, start: int, stop: int) -> ImageSplit:
    """Rows [start, stop) of a split without decoding the rest."""
    return ImageSplit(RowRange(data.images, start, stop), np.asarray(data.labels)[start:stop])


def layer_widths_of(backbone: Backbone, target_size: int, layers: list[str] | None = None) -> dict[str, int]:
    info = {i["name"]: i["shape"] for i in backbone.feature_info()}
    return {name: pooled_size(info[name], target_size) for name in (layers or list(info))}


def iter_features(
    backbone: Backbone,
    data: ImageSplit,
    target_sizes: list[int],
    batch_size: int = 32,
    dtype: np.dtype = np.float16,
    layers: list[str] | None = None,
    progress: bool | str = False,
    channels_last: bool = True,
    precision: str | None = None,
) -> Iterator[dict[int, LayerFeatures]]:
    """Per batch of `data`, in row order: {target_size: pooled features of every tap (or
    `layers`)}; `meta["row_start"]` is the batch's first row. One forward pass per image.
    `channels_last`: see `prepare_for_inference`; `precision`: "fp32" or "bf16" autocast
    (default: `default_precision` of the backbone's device)."""
    if not target_sizes:
        raise ValueError("give at least one target size")
    device = next(backbone.model.parameters()).device
    precision = precision or default_precision(device)
    _autocast(device, precision)  # checks the value before any forward
    prepare_for_inference(backbone, channels_last)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    names = layers or [i["name"] for i in backbone.feature_info()]
    labels = np.asarray(data.labels)
    desc = progress if isinstance(progress, str) else f"extract {backbone.name}"
    spec = backbone.spec
    store_dtype = torch.from_numpy(np.zeros(0, dtype=dtype)).dtype
    wanted = set(names)

    def pool(name: str, act: torch.Tensor) -> dict[int, torch.Tensor] | None:
        """Runs inside the tap's hook: pooled at every target size while the activation is fresh,
        so no batch ever holds all taps' activations. Cast in torch: numpy's float16
        conversion is ~14x slower."""
        if name not in wanted:
            return None
        act = act.float()
        return {t: pool_to_target(act, t).to(store_dtype) for t in target_sizes}

    with tqdm(total=len(data), desc=desc, unit="img", disable=not progress, mininterval=1.0) as bar:
        for start, chunk in batches(data.images, batch_size):
            with torch.inference_mode(), _autocast(device, precision):
                x = to_input(chunk, backbone.input_size, spec.mean, spec.std).to(device, non_blocking=True, memory_format=fmt)
                pooled = backbone.forward_taps(x, reduce=pool)
                out = {t: {name: pooled[name][t].cpu().numpy() for name in names} for t in target_sizes}
            stop = start + len(x)
            bar.update(len(x))
            meta = {"backbone": backbone.name, "row_start": start}
            yield {t: LayerFeatures(out[t], labels[start:stop].copy(), {**meta, "target_size": t}) for t in target_sizes}


def extract_features(
    backbone: Backbone,
    data: ImageSplit,
    target_sizes: list[int],
    batch_size: int = 32,
    dtype: np.dtype = np.float16,
    progress: bool | str = True,
    layers: list[str] | None = None,
    channels_last: bool = True,
    precision: str | None = None,
) -> dict[int, LayerFeatures]:
    """Pooled features of every tap (or `layers`) for each target size, from one pass over
    `data`, collected in memory (see `iter_features` for the streamed form).

    Returns {target_size: LayerFeatures}; `meta["forward_passes"]` counts images forwarded.
    """
    if not target_sizes:
        raise ValueError("give at least one target size")
    n = len(data)
    out = {t: {name: np.empty((n, w), dtype=dtype) for name, w in layer_widths_of(backbone, t, layers).items()}
           for t in target_sizes}
    for batch in iter_features(backbone, data, target_sizes, batch_size, dtype, layers, progress, channels_last, precision):
        for t, feats in batch.items():
            start = feats.meta["row_start"]
            for name, block in feats.layers.items():
                out[t][name][start : start + len(feats)] = block
    meta = {"forward_passes": n, "backbone": backbone.name}
    return {t: LayerFeatures(out[t], np.asarray(data.labels).copy(), {**meta, "target_size": t}) for t in target_sizes}
