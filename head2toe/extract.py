"""One backbone forward per image: every tap pooled to every requested target size.

The paper sweeps target sizes; pooling is cheap next to the forward pass, so all target
sizes come out of one pass. Outputs are raw pooled activations (float16 by default);
normalisation happens at use time.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from tqdm.auto import tqdm

from head2toe.backbones import Backbone
from head2toe.features import LayerFeatures
from head2toe.pooling import pool_to_target, pooled_size
from head2toe.preprocess import batches, to_input
from head2toe.tasks.base import ImageSplit


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def extract_features(
    backbone: Backbone,
    data: ImageSplit,
    target_sizes: list[int],
    batch_size: int = 32,
    dtype: np.dtype = np.float16,
    progress: bool | str = True,
    layers: list[str] | None = None,
) -> dict[int, LayerFeatures]:
    """Pooled features of every tap (or `layers`) for each target size, from one pass over `data`.

    Returns {target_size: LayerFeatures}; `meta["forward_passes"]` counts images forwarded.
    """
    if not target_sizes:
        raise ValueError("give at least one target size")
    device = next(backbone.model.parameters()).device
    info = {i["name"]: i["shape"] for i in backbone.feature_info()}
    names = layers or list(info)
    n = len(data)
    out = {
        t: {name: np.empty((n, pooled_size(info[name], t)), dtype=dtype) for name in names}
        for t in target_sizes
    }
    desc = progress if isinstance(progress, str) else f"extract {backbone.name}"
    bar = tqdm(total=n, desc=desc, unit="img", disable=not progress, mininterval=1.0)
    spec = backbone.spec
    store_dtype = torch.from_numpy(np.zeros(0, dtype=dtype)).dtype
    with torch.inference_mode(), _autocast(device):
        for start, chunk in batches(data.images, batch_size):
            x = to_input(chunk, backbone.input_size, spec.mean, spec.std).to(device, non_blocking=True)
            acts = backbone.forward_taps(x)
            stop = start + len(x)
            for name in names:
                act = acts[name].float()
                for t in target_sizes:
                    # cast in torch: numpy's float16 conversion is ~14x slower
                    out[t][name][start:stop] = pool_to_target(act, t).to(store_dtype).cpu().numpy()
            bar.update(len(x))
    bar.close()
    meta = {"forward_passes": n, "backbone": backbone.name}
    return {t: LayerFeatures(out[t], data.labels.copy(), {**meta, "target_size": t}) for t in target_sizes}
