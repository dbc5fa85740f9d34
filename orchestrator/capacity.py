"""Capacity plan of a sweep config: work, storage, memory per process and GPU-hours, before anything runs.

`plan_capacity(cfg)` is arithmetic over layer shapes (each backbone built with random weights on
torch's meta device: shapes without compute), task split sizes and the trial specs of
`orchestrator.plan`: no Ray, no data, no weights, no network. It sizes the bounded-memory data
path: the driver plans and logs but never reads features; extraction streams one batch at a time
into Parquet row groups; a probe trial holds its task's training features once in float32 plus its
heads' optimizer state; the cached float16 pages are memory-mapped and shared by a node's trials.
`CapacityPlan.refused` lists the processes whose planned memory exceeds what they ask for;
`check_fits(cfg)` turns the worst into one H2TError line (`h2t plan` and `h2t sweep` call it
before Ray starts).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from head2toe.backbones import RANDOM
from head2toe.cache import file_bytes, human_bytes, layer_widths
from head2toe.cache.format import ROW_GROUP_BYTES
from head2toe.errors import H2TError
from head2toe.methods import METHODS, PRELOGITS
from head2toe.protocol import cv_folds
from head2toe.tasks import get_task
from orchestrator.config import BackboneConfig, Resources, SweepConfig
from orchestrator.plan import cv_specs, extraction_needs, image_cv_specs

CACHE_DTYPE = "float16"
STORAGE_MODES = ("cache", "stream")  # test_features: cache (train + test cached) / stream (train only)


@dataclass(frozen=True)
class Assumptions:
    """Every number `h2t plan` assumes rather than computes, in one place (none measured on a GPU here).

    extract_img_per_s: images/s of one extraction task on one GPU (bf16 autocast, taps, pooling,
        float16 rows to Parquet). timm's AMP inference benchmark (results/benchmark-infer-amp-nchw-
        pt240-cu124-rtx4090.csv, batch 1024) gives resnet50@224 4,218, vit_base_patch16_224 2,787,
        tf_efficientnet_lite0 8,710 img/s for the bare forward; taken at ~1/4 for ~50 forward hooks,
        per-layer pooling, device-to-host copies of every pooled tap, Parquet writes and decoding
        images on the task's CPUs. Other timm models: `extract_img_per_s_other`.
    train_img_per_s: images/s of an image-level trial on one GPU (bf16 autocast, SGD): a backward
        pass costs ~2 forwards, so 1/3 of the same benchmark's inference rate, x0.75 for
        augmentation and the optimizer step.
    probe_tflops: sustained TFLOP/s of probe training on one GPU, costed as 6*B*F*C*K FLOPs per
        step: 4*B*F*C*K for the (B,F)x(F,K*C) matmul and its weight gradient (the features need
        no gradient), the other 2*B*F*C*K standing in for the memory-bound Adam and penalty
        passes over the K*F*C state (~10 float32 passes a step: ~40% of the matmul time at
        2 TB/s vs 10 TFLOP/s). Heads are float32 and torch leaves TF32 off for matmuls: an A100
        peaks at 19.5 fp32 TFLOP/s; half of it sustained for these tall-skinny matmuls.
    head_copies: float32 (F, K, C) tensors alive at a probe step's peak: weights, gradient and
        Adam's two moments (4) plus the step's temporaries (bias-corrected moments, the update,
        the penalty's backward) and the returned heads. Measured 8.5-9.4 on CPU (peak RSS of
        head2toe.probe.train_probes over five (F, K, C, penalty) shapes, this session); 9 used.
    driver_base_bytes / worker_base_bytes: RSS of the sweep driver (orchestrator.sweep, MLflow and
        Ray imported, ray.init done: 719 MiB measured) and of a Ray worker that imported torch,
        timm, pyarrow and head2toe (887 MiB RSS, 519 MiB unique, measured), rounded up to 1 GiB for
        Tune's trial table and allocator slack.
    batches_in_flight: pooled batches an extraction worker holds besides the one it computes
        (queued for the row-group writer).
    bf16_saved_ratio: activations saved for backward under bf16 autocast vs float32 (conv and
        linear inputs are cast, normalisation stays float32): measured 0.51 (resnet50) and 0.47
        (vit_b16) with CPU autocast and saved-tensor hooks, this session.
    """

    extract_img_per_s: tuple[tuple[str, float], ...] = (("resnet50", 1000.0), ("vit_b16", 700.0), ("efficientnet_lite0", 2000.0))
    extract_img_per_s_other: float = 500.0
    train_img_per_s: tuple[tuple[str, float], ...] = (("resnet50", 1000.0), ("vit_b16", 600.0), ("efficientnet_lite0", 1500.0))
    train_img_per_s_other: float = 300.0
    probe_tflops: float = 10.0
    head_copies: float = 9.0
    driver_base_bytes: int = 1 << 30
    worker_base_bytes: int = 1 << 30
    batches_in_flight: int = 4
    bf16_saved_ratio: float = 0.5

    def extract_rate(self, backbone: str) -> float:
        return dict(self.extract_img_per_s).get(backbone, self.extract_img_per_s_other)

    def train_rate(self, backbone: str) -> float:
        return dict(self.train_img_per_s).get(backbone, self.train_img_per_s_other)


ASSUMPTIONS = Assumptions()
PROBE_BATCH = 128  # head2toe.probe.ProbeConfig.batch_size
F32 = 4


@dataclass(frozen=True)
class BackboneShape:
    """What planning needs of one backbone config, from a random-init model."""

    name: str
    input_size: int
    batch_size: int
    params: int
    layers: int
    tap_elements: int  # activation elements of all taps for one image (what one forward materialises)
    widths: dict[int, int]  # target size -> candidate features (all layers)
    pre_logits: dict[int, int]  # target size -> pre_logits width (what `linear` reads)
    saved_f32: int  # activation bytes a float32 training forward saves for backward, per image


def backbone_shape(bb: BackboneConfig, target_sizes: list[int]) -> BackboneShape:
    """Layer shapes from a random-init model built on torch's meta device (no weights, no compute:
    ~0.3 s; a model whose init needs real tensors is built on the CPU instead). The training
    forward's saved activations are the bytes autograd's saved-tensor hooks see for a batch of 2."""
    import torch

    try:
        with torch.device("meta"):
            b = bb.create(weights=RANDOM, checkpoint=None, device="meta")
    except (RuntimeError, NotImplementedError):
        b = bb.create(weights=RANDOM, checkpoint=None)
    info = b.feature_info()
    widths = {t: layer_widths(b, t) for t in target_sizes}
    device = next(b.model.parameters()).device
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[id(t)] = t.numel() * t.element_size()
        return t

    model = b.model.train().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.zeros(2, 3, b.input_size, b.input_size, device=device))
    return BackboneShape(
        b.name, b.input_size, bb.batch_size, sum(p.numel() for p in b.model.parameters()), len(info),
        sum(math.prod(i["shape"]) for i in info), {t: sum(w.values()) for t, w in widths.items()},
        {t: w[PRELOGITS] for t, w in widths.items()}, sum(seen.values()) // 2,
    )


def composite_shape(bb: BackboneConfig, members: list[BackboneShape]) -> BackboneShape:
    """A composite backbone as its trials see it: the members' candidate features side by side,
    and (a stream-mode final trial builds every member) their parameters and taps summed."""
    sizes = members[0].widths
    return BackboneShape(
        bb.name, max(m.input_size for m in members), bb.batch_size, sum(m.params for m in members),
        sum(m.layers for m in members), sum(m.tap_elements for m in members),
        {t: sum(m.widths[t] for m in members) for t in sizes}, {t: sum(m.pre_logits[t] for m in members) for t in sizes},
        sum(m.saved_f32 for m in members),
    )


@dataclass(frozen=True)
class ProbeTrial:
    """The planned memory of one probe trial: a CV trial, or the final trial of a task x backbone
    at the fit of one final run (its grid's costliest point) while the heads already fitted for the
    others wait for the test pass (`held`)."""

    stage: str
    task: str
    backbone: str
    method: str
    target_size: int
    heads: int  # K: configurations trained together
    rows: int  # N: training features held (the whole train split)
    features: int  # F: features the method reads
    classes: int  # C
    steps: int
    keep_fractions: tuple[float, ...]
    gpu: dict[str, int]  # breakdown of the peak on the trial's GPU share (empty on CPU)
    host: dict[str, int]  # breakdown of the peak in host memory
    held: int = 0  # final trials: bytes of the other final runs' fitted heads

    @property
    def peak(self) -> int:
        """Bytes where the probe state lives: GPU memory when the trial has a GPU share, else host."""
        return sum((self.gpu or self.host).values())

    def label(self) -> str:
        return (f"{self.stage} trial task={self.task} backbone={self.backbone} method={self.method} "
                f"target_size={self.target_size} ({self.heads} head{'s' * (self.heads > 1)})")

    def flops(self) -> float:
        second = sum(self.keep_fractions)  # Head2Toe's retrain: one stacked probe per keep fraction
        return 6.0 * min(PROBE_BATCH, self.rows) * self.features * self.classes * self.heads * self.steps * (1 + second)


def probe_memory(rows: int, fold_rows: int, features: int, classes: int, heads: int, keep_fractions: tuple[float, ...],
                 test_row_group: int, a: Assumptions = ASSUMPTIONS) -> dict[str, int]:
    """Peak bytes of one probe trial's data and heads, by part: the larger of the first stage (all
    heads trained on all F features) and, for selection methods, the retrain on the largest kept
    fraction (K stacked copies of the kept columns of the fold's training rows)."""
    x = rows * features * F32
    kfc = heads * features * classes * F32
    first = {"features (float32, unit-normalised)": x, "heads + Adam state (weights, gradient, 2 moments)": 4 * kfc,
             "step temporaries": int((a.head_copies - 4) * kfc), "mini-batch rows": min(PROBE_BATCH, rows) * features * F32}
    if keep_fractions:
        kept = math.ceil(features * max(keep_fractions))
        second = {"features (float32, unit-normalised)": x, "first-stage heads": kfc,
                  "selected features, all heads": heads * fold_rows * kept * F32,
                  "retrain heads + Adam + temporaries": int(a.head_copies * heads * kept * classes * F32)}
        if sum(second.values()) > sum(first.values()):
            first = second
    if test_row_group:
        first["test row group (float16 + float32)"] = 3 * test_row_group
    return first


@dataclass(frozen=True)
class Refusal:
    """A process whose planned memory exceeds its grant, with the fix."""

    what: str
    planned: int
    granted: int
    where: str  # "GPU" or "host"
    fix: str

    def line(self, more: int = 0) -> str:
        others = f" (and {more} more over their grant)" if more else ""
        return (f"{self.what} plans {human_bytes(self.planned)} of {self.where} memory but is granted "
                f"{human_bytes(self.granted)}{others}; fix: {self.fix}")


@dataclass
class CapacityPlan:
    """Everything `h2t plan` prints; `as_dict()` is its --json."""

    config: str
    backbones: list[BackboneShape]
    target_sizes: list[int]
    trials: dict[str, dict[str, int]]
    forward_passes: dict[str, int]
    storage: list[dict]  # one row per task x backbone x split x target size
    memory: dict[str, dict[str, dict[str, int]]]  # process kind -> "gpu"/"host" -> part -> bytes
    granted: dict[str, dict[str, int]]  # process kind -> "gpu"/"host" -> bytes it asks Ray for (absent: not asked)
    largest_probe: ProbeTrial | None
    gpu_hours: dict[str, float]
    refused: list[Refusal] = field(default_factory=list)
    test_features: str | None = None
    assumptions: Assumptions = ASSUMPTIONS

    def storage_bytes(self, mode: str) -> int:
        return sum(r["bytes"] for r in self.storage if mode == "cache" or r["split"] != "test")

    def as_dict(self) -> dict:
        return {
            "config": self.config, "target_sizes": self.target_sizes,
            "backbones": [{**asdict(b), "widths": {str(k): v for k, v in b.widths.items()},
                           "pre_logits": {str(k): v for k, v in b.pre_logits.items()}} for b in self.backbones],
            "trials": self.trials, "forward_passes": self.forward_passes,
            "storage": {"dtype": CACHE_DTYPE, "modes": {m: self.storage_bytes(m) for m in STORAGE_MODES},
                        "selected_mode": self.test_features, "splits": self.storage},
            "memory": {k: {w: {**parts, "total": sum(parts.values())} for w, parts in m.items()} for k, m in self.memory.items()},
            "granted": self.granted,
            "largest_probe_trial": None if self.largest_probe is None else
            {**asdict(self.largest_probe), "label": self.largest_probe.label(), "peak": self.largest_probe.peak},
            "gpu_hours": self.gpu_hours, "refused": [asdict(r) | {"line": r.line()} for r in self.refused],
            "fits": not self.refused, "assumptions": asdict(self.assumptions),
        }


def _share(need: int, gpu_memory: int) -> str:
    """The smallest `gpu` share (2 decimals, rounded up) whose memory holds `need`."""
    return f"{math.ceil(100 * need / gpu_memory) / 100:g}"


def _grants(res: Resources, gpu_memory: int) -> list[tuple[str, int]]:
    """What a process is granted: its GPU share's memory (gpu > 0) and host memory (when set)."""
    return ([("gpu", int(res.gpu * gpu_memory))] if res.gpu else []) + ([("host", res.memory)] if res.memory else [])


def _size_up(need: int) -> str:
    """`need` as a config size string, rounded up (so that it is enough): "1.3GiB", "270MiB"."""
    return f"{math.ceil(need / 2**30 * 10) / 10:g}GiB" if need >= 2**30 else f"{math.ceil(need / 2**20)}MiB"


def _raise_fix(where: str, need: int, res_name: str, gpu_memory: int) -> str:
    if where == "host":
        return f"{res_name}.memory >= {_size_up(need)}"
    return f"{res_name}.gpu >= {_share(need, gpu_memory)}" if need <= gpu_memory else f"a GPU with >= {_size_up(need)} (resources.gpu_memory)"


class _Planner:
    """Shapes, split sizes and resources of one config, and the per-process arithmetic on them."""

    def __init__(self, cfg: SweepConfig, a: Assumptions):
        self.cfg, self.a = cfg, a
        self.needs = extraction_needs(cfg)
        self.sizes = self.needs[0][2] if self.needs else []
        singles = list(dict.fromkeys(m for bb in cfg.backbones for m in bb.members()))
        self.shapes = {bb: backbone_shape(bb, self.sizes or [512]) for bb in singles}
        for bb in (b for b in cfg.backbones if b.is_composite):
            self.shapes[bb] = composite_shape(bb, [self.shapes[m] for m in bb.members()])
        self.tasks = {t: get_task(t) for t in cfg.tasks}
        self.rows = {t: task.split_sizes() for t, task in self.tasks.items()}
        self.res, self.gpu_memory = cfg.resources, cfg.resources.gpu_memory

    def storage(self) -> list[dict]:
        return [{"task": t, "backbone": bb.name, "split": split, "target_size": s, "rows": self.rows[t][split],
                 "features": self.shapes[bb].widths[s], "bytes": file_bytes(self.rows[t][split], self.shapes[bb].widths[s], CACHE_DTYPE)}
                for t, bb, ts in self.needs for split in ("train", "test") for s in ts]

    def input_features(self, bb: BackboneConfig, method: str, size: int) -> int:
        """The features a method's probe reads at a target size (pre-logits only, or every layer)."""
        return (self.shapes[bb].pre_logits if METHODS[method].layers == PRELOGITS else self.shapes[bb].widths)[size]

    def probe(self, stage: str, task: str, bb: BackboneConfig, method: str, size: int, heads: int, steps: int,
              keep_fractions: tuple[float, ...], held: int = 0) -> ProbeTrial:
        rows, classes = self.rows[task]["train"], self.tasks[task].num_classes
        feats = self.input_features(bb, method, size)
        test_group = min(ROW_GROUP_BYTES, file_bytes(self.rows[task]["test"], feats, CACHE_DTYPE)) if stage == "final" else 0
        fold_rows = len(cv_folds(rows)[0][0]) if stage == "cv" else rows
        parts = probe_memory(rows, fold_rows, feats, classes, heads, keep_fractions, test_group, self.a)
        if held:
            parts["fitted heads of the other final runs (float32)"] = held
        base = {"Python + torch + Ray worker": self.a.worker_base_bytes}
        if stage == "final" and self.cfg.test_features == "stream":  # the trial also runs the backbone over the test images
            parts.update(self.extraction_compute(bb))
        if self.grant(stage).gpu:  # on a GPU the probe state lives there; the host stages the float32 features once
            gpu, host = parts, {**base, "features staged for the copy to the GPU (float32)": rows * feats * F32}
        else:
            gpu, host = {}, {**base, **parts}
        return ProbeTrial(stage, task, bb.name, method, size, heads, rows, feats, classes, steps, keep_fractions, gpu, host, held)

    def head_bytes(self, task: str, bb: BackboneConfig, method: str, size: int, keep_fractions: tuple[float, ...]) -> int:
        """One fitted final head kept for the test pass: F x C float32 (the kept columns' head for a
        selection method, at its largest keep fraction)."""
        feats = self.input_features(bb, method, size)
        width = math.ceil(feats * max(keep_fractions)) if keep_fractions else feats
        return width * self.tasks[task].num_classes * F32

    def probe_trials(self) -> tuple[list[ProbeTrial], list[ProbeTrial]]:
        """CV trials as orchestrator.plan.cv_specs makes them; the fits of each final trial (one per
        task x backbone, fitting every method x seed, then scoring all heads in one test pass), each
        at the costliest point of its method's grid, since CV has not chosen theirs yet."""
        cv = [self.probe("cv", s.task, s.backbone, s.method, s.target_size, len(s.hps), max(h.steps for h in s.hps),
                         tuple(sorted({f for h in s.hps for f in h.keep_fractions}))) for s in cv_specs(self.cfg)]
        final = []
        for t in self.cfg.tasks:
            for bb in self.cfg.backbones:
                runs = [(m, max(g.target_size), max(g.steps), (max(g.keep_fractions),) if g.keep_fractions else ())
                        for m, g in self.cfg.feature_grids().items() for _ in self.cfg.seeds]
                heads = [self.head_bytes(t, bb, m, size, kf) for m, size, _, kf in runs]
                final += [self.probe("final", t, bb, m, size, 1, steps, kf, held=sum(heads) - own)
                          for (m, size, steps, kf), own in zip(runs, heads)]
        return cv, final

    def grant(self, stage: str) -> Resources:
        """What a probe trial of `stage` asks for."""
        return self.cfg.final_resources() if stage == "final" else self.res.trial

    def probe_refusals(self, trials: list[ProbeTrial], stage: str) -> list[Refusal]:
        """Probe trials of one stage over their grant. The grant a fix names is enough for every
        probe trial of that stage (so one edit clears them all); a smaller target size is named per method."""
        out = []
        # final trials inherit `trial` unless `final_trial` is given: the fix names what the user would edit
        res_name = "resources.final_trial" if stage == "final" and self.res.final_trial is not None else "resources.trial"
        for where, granted in _grants(self.grant(stage), self.gpu_memory):
            over = [(t, sum(getattr(t, where).values())) for t in trials if sum(getattr(t, where).values()) > granted]
            if not over:
                continue
            widest = max(sum(getattr(t, where).values()) for t in trials)
            one_head = max(self._need(t, where, t.target_size, 1) for t in trials)
            for t, need in over:
                fixes = []
                if any(x.heads > 1 for x in trials):
                    if one_head <= granted:
                        fixes.append(f"batch_hparams: false (1 head per trial: at most {human_bytes(one_head)})")
                    elif where == "gpu" and one_head <= self.gpu_memory:
                        fixes.append(f"batch_hparams: false with {res_name}.gpu >= {_share(one_head, self.gpu_memory)}")
                fixes.append(_raise_fix(where, widest, res_name, self.gpu_memory))
                smaller = [s for s in self.cfg.feature_grids()[t.method].target_size
                           if s < t.target_size and self._need(t, where, s, t.heads) <= granted]
                if smaller:
                    fixes.append(f"target sizes <= {max(smaller)} for {t.method}")
                out.append(Refusal(t.label(), need, granted, "GPU" if where == "gpu" else "host", ", or ".join(fixes)))
        return out

    def _need(self, t: ProbeTrial, where: str, size: int, heads: int) -> int:
        """Bytes (`where`: "gpu"/"host") of trial `t` at another target size or head count."""
        if (size, heads) == (t.target_size, t.heads):
            return sum(getattr(t, where).values())
        bb = next(b for b in self.cfg.backbones if b.name == t.backbone)
        return sum(getattr(self.probe(t.stage, t.task, bb, t.method, size, heads, t.steps, t.keep_fractions, t.held), where).values())

    def extraction(self, bb: BackboneConfig) -> dict[str, dict[str, int]]:
        """One extraction task: the backbone, one batch in and its taps, a few pooled batches, one
        row group per target size being written."""
        sh, res = self.shapes[bb], self.res.extract
        pooled = sh.batch_size * sum(sh.widths.values())
        rows = max((self.rows[t][s] for t, b, _ in self.needs if b == bb for s in ("train", "test")), default=0)
        compute = self.extraction_compute(bb)
        host = {"Python + torch + Ray worker": self.a.worker_base_bytes,
                f"pooled outputs of {self.a.batches_in_flight} batches (float16)": self.a.batches_in_flight * pooled * 2,
                f"one row group per target size (ROW_GROUP_BYTES = {human_bytes(ROW_GROUP_BYTES)} at most)":
                    sum(min(ROW_GROUP_BYTES, file_bytes(rows, sh.widths[s], CACHE_DTYPE)) for s in self.sizes)}
        return {"gpu": compute, "host": host} if res.gpu else {"host": {**host, **compute}}

    def extraction_compute(self, bb: BackboneConfig) -> dict[str, int]:
        """The backbone and one batch through it (on the GPU when extraction has one)."""
        sh, on_gpu = self.shapes[bb], self.res.extract.gpu > 0
        return {"parameters (float32)": sh.params * F32, "one input batch (float32)": sh.batch_size * 3 * sh.input_size ** 2 * F32,
                f"one batch of tap activations ({'bf16' if on_gpu else 'float32'})": sh.batch_size * sh.tap_elements * (2 if on_gpu else F32),
                "pooled batch (float32)": sh.batch_size * sum(sh.widths.values()) * F32}

    def image_trial(self, bb: BackboneConfig) -> dict[str, dict[str, int]]:
        """One fine-tuning trial at the backbone's image_input_size: weights, gradients and momentum,
        the activations a micro-batch saves for backward (measured from the model at input_size,
        scaled by the pixel count), and the task's decoded training images."""
        sh, tc, on_gpu = self.shapes[bb], self.cfg.train_config(), self.res.image_trial.gpu > 0
        side = bb.image_input_size or sh.input_size
        micro = tc.micro_batch or (tc.batch_size if on_gpu else 32)
        compute = {"weights + gradients + SGD momentum (float32)": 3 * sh.params * F32,
                   f"saved activations of a micro-batch of {micro} ({'bf16' if on_gpu else 'float32'})":
                       int(micro * sh.saved_f32 * (side / sh.input_size) ** 2 * (self.a.bf16_saved_ratio if on_gpu else 1))}
        images = max(r["train"] for r in self.rows.values()) * 3 * side ** 2
        host = {"Python + torch + Ray worker": self.a.worker_base_bytes, f"training images (uint8 at {side} px)": images}
        return {"gpu": compute, "host": host} if on_gpu else {"host": {**host, **compute}}

    def refusals_of(self, what: str, memory: dict[str, dict[str, int]], res: Resources, res_name: str, gpu_fix: str) -> list[Refusal]:
        out = []
        for where, granted in _grants(res, self.gpu_memory):
            need = sum(memory.get(where, {}).values())
            if need > granted:
                fix = _raise_fix(where, need, res_name, self.gpu_memory) + (f", or {gpu_fix}" if where == "gpu" else "")
                out.append(Refusal(what, need, granted, "GPU" if where == "gpu" else "host", fix))
        return out


def plan_capacity(cfg: SweepConfig, a: Assumptions = ASSUMPTIONS) -> CapacityPlan:
    """The capacity plan of `cfg` (seconds: one meta-device model per backbone, arithmetic after)."""
    p = _Planner(cfg, a)
    storage = p.storage()
    cv, finals = p.probe_trials()
    image = cfg.image_grids()
    image_cv = image_cv_specs(cfg)
    image_finals = [(t, bb, max(pt.steps for pt in pts)) for t in cfg.tasks for bb in cfg.backbones for pts in image.values() for _ in cfg.seeds]
    trials = {"cv": {"feature_trials": len(cv), "feature_runs": sum(t.heads for t in cv), "image_trials": len(image_cv)},
              "final": {"feature_trials": len({(t.task, t.backbone) for t in finals}), "feature_runs": len(finals),
                        "image_trials": len(image_finals)}}

    big = max(p.shapes.values(), key=lambda s: s.params)
    memory: dict[str, dict[str, dict[str, int]]] = {"driver": {"host": {
        "Python + Ray + MLflow client": a.driver_base_bytes, f"largest backbone's parameters ({big.name}, float32)": big.params * F32}}}
    granted: dict[str, dict[str, int]] = {}
    refused = p.probe_refusals(cv, "cv") + p.probe_refusals(finals, "final")
    if p.sizes:
        for bb, sh in ((b, sh) for b, sh in p.shapes.items() if not b.is_composite):  # a composite extracts as its members
            memory[f"extraction worker ({bb.name})"] = m = p.extraction(bb)
            granted[f"extraction worker ({bb.name})"] = dict(_grants(cfg.resources.extract, p.gpu_memory))
            refused += p.refusals_of(f"extraction task backbone={bb.name} batch_size={sh.batch_size}", m, cfg.resources.extract,
                                     "resources.extract", "a smaller backbones[].batch_size")
    largest = max(cv + finals, key=lambda t: t.peak, default=None)
    if largest is not None:
        memory["largest probe trial"] = {k: v for k, v in (("gpu", largest.gpu), ("host", largest.host)) if v}
        granted["largest probe trial"] = dict(_grants(p.grant(largest.stage), p.gpu_memory))
        memory["node page cache (shared by the node's trials)"] = {"host": {
            "largest cached train split (float16, memory-mapped once per node)": max(r["bytes"] for r in storage if r["split"] == "train")}}
    if image:
        for bb in cfg.backbones:
            memory[f"image trial ({bb.name})"] = m = p.image_trial(bb)
            granted[f"image trial ({bb.name})"] = dict(_grants(cfg.resources.image_trial, p.gpu_memory))
            refused += p.refusals_of(f"image trial backbone={bb.name} methods={','.join(image)}", m, cfg.resources.image_trial,
                                     "resources.image_trial", "a smaller image_training.micro_batch")

    tc, tflop = cfg.train_config(), a.probe_tflops * 1e12 * 3600
    images = {t: p.rows[t]["train"] + p.rows[t]["test"] for t in cfg.tasks}
    gpu_hours = {
        "extraction, train splits": sum(p.rows[t]["train"] / a.extract_rate(bb.name) for t, bb, _ in p.needs) / 3600,
        # with test_features: stream each backbone entry's final trial runs its backbone (a composite: each member) on test
        "extraction, test splits (final stage with test_features: stream)": sum(
            p.rows[t]["test"] / a.extract_rate(m.name) for t, m in (
                [(t, m) for t in cfg.tasks for bb in cfg.backbones for m in bb.members()] if cfg.test_features == "stream"
                else [(t, bb) for t, bb, _ in p.needs])) / 3600,
        "probe trials, CV": sum(t.flops() for t in cv) / tflop,
        "probe trials, final (each grid's costliest point)": sum(t.flops() for t in finals) / tflop,
        "image trials, CV": sum(s.hp.steps * tc.batch_size / a.train_rate(s.backbone.name) for s in image_cv) / 3600,
        "image trials, final (longest schedule, + test)": sum((steps * tc.batch_size + p.rows[t]["test"]) / a.train_rate(bb.name)
                                                              for t, bb, steps in image_finals) / 3600,
    }
    gpu_hours["total"] = sum(gpu_hours.values())
    forward = {"extraction: one per image per backbone (train + test)": sum(images[t] for t, _, _ in p.needs),
               "image-method training: images through the backbone": sum(s.hp.steps * tc.batch_size for s in image_cv)
               + sum(steps * tc.batch_size for *_, steps in image_finals)}
    refused.sort(key=lambda r: r.planned - r.granted, reverse=True)
    return CapacityPlan(cfg.name, list(p.shapes.values()), p.sizes, trials, forward, storage, memory, granted, largest, gpu_hours, refused,
                        cfg.test_features, a)


def check_fits(cfg: SweepConfig, plan: CapacityPlan | None = None) -> None:
    """Raise H2TError (one line: the worst process, planned vs granted, the fix) when any process
    of `cfg` plans more memory than it asks for. Free when nothing asks for GPU or host memory."""
    kinds = (cfg.resources.trial, cfg.final_resources(), cfg.resources.extract, cfg.resources.image_trial)
    if plan is None and not any(r.gpu or r.memory for r in kinds):
        return
    plan = plan or plan_capacity(cfg)
    if plan.refused:
        raise H2TError(f"{cfg.name}: {plan.refused[0].line(len(plan.refused) - 1)}")
