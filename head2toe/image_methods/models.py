"""The networks the image-level methods train.

- `PreLogitsNet` (finetune, scratch): the backbone with a new linear head on its
  pre-logits features.
- `KeptFeaturesNet` (head2toe_ft): the backbone's taps, pooled exactly as the feature cache
  pools them, only the kept columns gathered, each layer's kept block re-normalised, and a
  linear head on the concatenation: Head2Toe's head, trained end to end.

Heads start at zero by default (as in BiT, the vtab recipe): training starts from the
backbone's features rather than a random projection of them, and the start does not depend
on the seed. `head_init="glorot"` (the reference recipe) starts them as Keras' Dense does:
Glorot-uniform weights from the trial seed, zero bias.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch import nn

from head2toe.backbones import Backbone
from head2toe.normalize import unit_normalize
from head2toe.pooling import pool_to_target

BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


def init_head(head: nn.Linear, head_init: str = "zeros", seed: int = 0) -> nn.Linear:
    """Zero weights, or Glorot-uniform weights drawn from `seed`; the bias starts at zero."""
    if head_init == "glorot":
        gen = torch.Generator().manual_seed(int(seed))
        bound = (6.0 / (head.in_features + head.out_features)) ** 0.5
        with torch.no_grad():
            head.weight.copy_(torch.rand(head.weight.shape, generator=gen) * (2 * bound) - bound)
    elif head_init == "zeros":
        nn.init.zeros_(head.weight)
    else:
        raise ValueError(f"head_init must be 'zeros' or 'glorot', got {head_init!r}")
    nn.init.zeros_(head.bias)
    return head


class PreLogitsNet(nn.Module):
    """Backbone + linear head on pre-logits; the ImageNet classifier is replaced."""

    def __init__(self, backbone: Backbone, num_classes: int, head_init: str = "zeros", seed: int = 0):
        super().__init__()
        self.body = backbone.model
        self.body.reset_classifier(num_classes)
        init_head(self.body.get_classifier(), head_init, seed)  # timm names it classifier / fc / head
        self.n_features = int(self.body.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class KeptFeatureHead(nn.Module):
    """Linear head on the kept columns of pooled layer features, re-normalised per layer."""

    def __init__(self, kept: dict[str, np.ndarray], target_size: int, num_classes: int, head_init: str = "zeros",
                 seed: int = 0):
        super().__init__()
        self.layers = [name for name, idx in kept.items() if len(idx)]
        self.target_size = int(target_size)
        for i, name in enumerate(self.layers):
            self.register_buffer(f"kept_{i}", torch.as_tensor(np.asarray(kept[name]), dtype=torch.long))
        self.n_features = int(sum(len(kept[n]) for n in self.layers))
        self.linear = init_head(nn.Linear(self.n_features, num_classes), head_init, seed)

    def pool(self, acts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {n: pool_to_target(acts[n].float(), self.target_size) for n in self.layers}

    def features(self, pooled: dict[str, torch.Tensor]) -> torch.Tensor:
        """The head's input: each layer's kept block unit-normalised, concatenated (the
        layout `LayerFeatures.matrix(kept)` builds from the cache)."""
        blocks = [unit_normalize(pooled[n][:, getattr(self, f"kept_{i}")]) for i, n in enumerate(self.layers)]
        return torch.cat(blocks, dim=1)

    def forward(self, acts: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.linear(self.features(self.pool(acts)))


class KeptFeaturesNet(nn.Module):
    """Backbone whose tapped activations feed a `KeptFeatureHead` (only the taps it needs are hooked)."""

    def __init__(self, backbone: Backbone, kept: dict[str, np.ndarray], target_size: int, num_classes: int,
                 head_init: str = "zeros", seed: int = 0):
        super().__init__()
        self.body = backbone.model
        self.head = KeptFeatureHead(kept, target_size, num_classes, head_init, seed)
        needed = set(self.head.layers)
        # a plain attribute (not a submodule): the same model, hooked on the needed taps only
        self._tapper = replace(backbone, taps={k: v for k, v in backbone.taps.items() if k in needed})
        self.n_features = self.head.n_features

    def taps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._tapper.forward_taps(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.taps(x))


def set_bn_mode(model: nn.Module, mode: str) -> None:
    """Training mode for the model; with "frozen", BatchNorm layers use (and keep) their
    running statistics while their affine weights still train."""
    model.train()
    if mode == "frozen":
        for m in model.modules():
            if isinstance(m, BN_TYPES):
                m.eval()
