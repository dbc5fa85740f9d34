"""Capacity plan of a sweep config: work, storage, memory per process and GPU-hours, before anything runs.

`plan_capacity(cfg)` is pure arithmetic over layer shapes (backbones built with random weights,
one batch-1 forward each), task split sizes and the trial specs of `orchestrator.plan`: no Ray,
no data, no network. It sizes the bounded-memory data path: the driver plans and logs but never
reads features; extraction streams one batch at a time into Parquet row groups; a probe trial
holds its task's training features once in float32 plus its heads' optimizer state; the cached
float16 pages are memory-mapped and shared by the trials of a node. `refusals()` lists the
trials whose planned memory exceeds what they ask for; `check_fits(cfg)` turns the largest into
one H2TError line (`h2t plan` and `h2t sweep` call it before Ray starts).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from head2toe.cache import file_bytes, human_bytes, layer_widths
from head2toe.cache.format import ROW_GROUP_BYTES
from head2toe.errors import H2TError
from head2toe.methods import METHODS
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
        step (the (B,F)x(F,K*C) matmul, its weight gradient and the input-gradient-free backward
        counted as 3 matmuls of 2*B*F*K*C). Heads are float32 and torch leaves TF32 off for
        matmuls: an A100 peaks at 19.5 fp32 TFLOP/s; half of it sustained for tall-skinny
        matmuls plus the memory-bound Adam update.
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

    from head2toe.backbones import create_backbone

    try:
        with torch.device("meta"):
            b = create_backbone(bb.name, weights="random", input_size=bb.input_size, device="meta")
    except (RuntimeError, NotImplementedError):
        b = create_backbone(bb.name, weights="random", input_size=bb.input_size)
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
        {t: w["pre_logits"] for t, w in widths.items()}, sum(seen.values()) // 2,
    )


@dataclass(frozen=True)
class ProbeTrial:
    """The planned memory of one probe trial (a CV trial, or a final trial at its grid's largest point)."""

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
    on_gpu: bool
    parts: dict[str, int]  # breakdown of the peak (bytes)

    @property
    def peak(self) -> int:
        return sum(self.parts.values())

    def label(self) -> str:
        return f"{self.stage} trial task={self.task} backbone={self.backbone} method={self.method} target_size={self.target_size} ({self.heads} head{'s' * (self.heads > 1)})"

    def flops(self) -> float:
        second = sum(self.keep_fractions)  # Head2Toe's retrain: one stacked probe per keep fraction
        return 6.0 * min(PROBE_BATCH, self.rows) * self.features * self.classes * self.heads * self.steps * (1 + second)


def probe_memory(rows: int, fold_rows: int, features: int, classes: int, heads: int, keep_fractions: tuple[float, ...],
                 test_row_group: int, a: Assumptions = ASSUMPTIONS) -> dict[str, int]:
    """Peak bytes of one probe trial, by part: the larger of the first stage (all heads trained on
    all F features) and, for selection methods, the retrain on the largest kept fraction."""
    x = rows * features * F32
    kfc = heads * features * classes * F32
    first = {"features (float32, unit-normalised)": x, "heads + Adam state (4 copies)": int(4 * kfc),
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
    memory: dict[str, dict]
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
            "memory": self.memory,
            "largest_probe_trial": None if self.largest_probe is None else {**asdict(self.largest_probe), "peak": self.largest_probe.peak},
            "gpu_hours": self.gpu_hours, "refused": [asdict(r) | {"line": r.line()} for r in self.refused],
            "fits": not self.refused, "assumptions": asdict(self.assumptions),
        }


def _share(need: int, gpu_memory: int) -> str:
    return f"{math.ceil(100 * need / gpu_memory) / 100:g}"


def _probe_fix(t: ProbeTrial, need_at, granted: int, res_name: str, res: Resources, gpu_memory: int, sizes: list[int]) -> str:
    """The cheapest changes that make `t` fit: one head per trial, a bigger grant, a smaller target size."""
    fixes = []
    if t.heads > 1:
        one = need_at(t.target_size, 1)
        if one <= granted:
            fixes.append(f"batch_hparams: false (1 head per trial plans {human_bytes(one)})")
        elif res.gpu and one <= gpu_memory:
            fixes.append(f"batch_hparams: false with {res_name}.gpu >= {_share(one, gpu_memory)}")
    if res.gpu:
        fixes.append(f"{res_name}.gpu >= {_share(t.peak, gpu_memory)}" if t.peak <= gpu_memory
                     else f"a GPU with >= {human_bytes(t.peak)} (resources.gpu_memory)")
    else:
        fixes.append(f"{res_name}.memory >= {human_bytes(t.peak)}")
    smaller = [s for s in sizes if s < t.target_size and need_at(s, t.heads) <= granted]
    if smaller:
        fixes.append(f"target sizes <= {max(smaller)}")
    return ", or ".join(fixes)


def _granted(res: Resources, gpu_memory: int) -> list[tuple[str, int]]:
    out = [("GPU", int(res.gpu * gpu_memory))] if res.gpu else []
    return out + ([("host", res.memory)] if res.memory else [])


def plan_capacity(cfg: SweepConfig, a: Assumptions = ASSUMPTIONS) -> CapacityPlan:
    """The capacity plan of `cfg` (seconds: one random-init model per backbone)."""
    from head2toe.protocol import cv_folds
    from head2toe.tasks import get_task

    needs = extraction_needs(cfg)
    sizes = needs[0][2] if needs else []
    image = cfg.image_grids()
    shapes = {bb: backbone_shape(bb, sizes or [512]) for bb in cfg.backbones}
    tasks = {t: get_task(t) for t in cfg.tasks}
    split_rows = {t: task.split_sizes() for t, task in tasks.items()}
    res, gpu_mem = cfg.resources, cfg.resources.gpu_memory

    # storage and extraction work
    storage = []
    for t, bb, ts in needs:
        for split in ("train", "test"):
            rows = split_rows[t][split]
            storage += [{"task": t, "backbone": bb.name, "split": split, "target_size": s, "rows": rows,
                         "features": shapes[bb].widths[s], "bytes": file_bytes(rows, shapes[bb].widths[s], CACHE_DTYPE)} for s in ts]
    images = {t: split_rows[t]["train"] + split_rows[t]["test"] for t in cfg.tasks}

    # probe trials
    def need_at(task: str, bb: BackboneConfig, method: str, size: int, heads: int, kf: tuple, stage: str) -> dict[str, int]:
        rows = split_rows[task]["train"]
        feats = (shapes[bb].pre_logits if METHODS[method].layers == "pre_logits" else shapes[bb].widths)[size]
        test_group = min(ROW_GROUP_BYTES, file_bytes(split_rows[task]["test"], feats, CACHE_DTYPE)) if stage == "final" else 0
        fold_rows = len(cv_folds(rows)[0][0]) if stage == "cv" else rows
        return probe_memory(rows, fold_rows, feats, tasks[task].num_classes, heads, kf, test_group, a)

    def probe(stage, task, bb, method, size, heads, steps, kf) -> ProbeTrial:
        parts = need_at(task, bb, method, size, heads, kf, stage)
        feats = (shapes[bb].pre_logits if METHODS[method].layers == "pre_logits" else shapes[bb].widths)[size]
        return ProbeTrial(stage, task, bb.name, method, size, heads, split_rows[task]["train"], feats,
                          tasks[task].num_classes, steps, kf, res.trial.gpu > 0, parts)

    cv = cv_specs(cfg)
    probes = [probe("cv", s.task, s.backbone, s.method, s.target_size, len(s.hps), max(h.steps for h in s.hps),
                    tuple(sorted({f for h in s.hps for f in h.keep_fractions}))) for s in cv]
    grids = cfg.feature_grids()
    finals = [probe("final", t, bb, m, max(g.target_size), 1, max(g.steps), (max(g.keep_fractions),) if g.keep_fractions else ())
              for t in cfg.tasks for bb in cfg.backbones for m, g in grids.items() for _ in cfg.seeds]
    image_cv = image_cv_specs(cfg)
    image_finals = [(t, bb, m, max(p.steps for p in pts)) for t in cfg.tasks for bb in cfg.backbones
                    for m, pts in image.items() for _ in cfg.seeds]
    trials = {"cv": {"feature_trials": len(cv), "feature_runs": sum(len(s.hps) for s in cv), "image_trials": len(image_cv)},
              "final": {"feature_trials": len(finals), "image_trials": len(image_finals)}}

    # memory per process kind
    big = max(shapes.values(), key=lambda s: s.params)
    memory: dict[str, dict] = {"driver": {"where": "host", "parts": {
        "Python + Ray + MLflow client": a.driver_base_bytes, f"largest backbone's parameters ({big.name}, float32)": big.params * F32}}}
    refused: list[Refusal] = []
    for bb, sh in shapes.items():
        if not sizes:
            continue
        on_gpu = res.extract.gpu > 0
        act = 2 if on_gpu else F32
        pooled = sh.batch_size * sum(sh.widths.values())
        rows_by_size = max((r for r in storage if r["backbone"] == bb.name), key=lambda r: r["bytes"])
        device = {"parameters (float32)": sh.params * F32, "one input batch (float32)": sh.batch_size * 3 * sh.input_size ** 2 * F32,
                  f"one batch of tap activations ({'bf16' if on_gpu else 'float32'})": sh.batch_size * sh.tap_elements * act,
                  "pooled batch (float32)": pooled * F32}
        host = {"Python + torch + Ray worker": a.worker_base_bytes,
                f"pooled outputs of {a.batches_in_flight} batches (float16)": a.batches_in_flight * pooled * 2,
                f"one row group per target size (<= ROW_GROUP_BYTES = {human_bytes(ROW_GROUP_BYTES)})":
                    sum(min(ROW_GROUP_BYTES, file_bytes(rows_by_size["rows"], sh.widths[s], CACHE_DTYPE)) for s in sizes)}
        if not on_gpu:
            host = {**host, **device}
        key = f"extraction worker ({bb.name})"
        memory[key] = {"where": "GPU + host" if on_gpu else "host", "host": host, **({"gpu": device} if on_gpu else {})}
        for where, granted in _granted(res.extract, gpu_mem):
            need = sum((device if where == "GPU" else host).values())
            if need > granted:
                fix = (f"resources.extract.gpu >= {_share(need, gpu_mem)} or a smaller backbones[].batch_size" if where == "GPU"
                       else f"resources.extract.memory >= {human_bytes(need)}")
                refused.append(Refusal(f"extraction task backbone={bb.name} batch_size={sh.batch_size}", need, granted, where, fix))

    for t in probes + finals:
        for where, granted in _granted(res.trial, gpu_mem):
            if where == "GPU":
                need = t.peak
            else:  # host: the worker, plus on a GPU the float32 features staged before the copy
                need = a.worker_base_bytes + (t.rows * t.features * F32 if t.on_gpu else t.peak)
            if need > granted:
                def need_at_size(size, heads, t=t):
                    parts = need_at(t.task, next(b for b in cfg.backbones if b.name == t.backbone), t.method, size, heads, t.keep_fractions, t.stage)
                    return sum(parts.values()) + (0 if where == "GPU" else a.worker_base_bytes)
                sizes_m = sorted(grids[t.method].target_size)
                refused.append(Refusal(t.label(), need, granted, where,
                                       _probe_fix(t, need_at_size, granted, "resources.trial", res.trial, gpu_mem, sizes_m)))
    largest = max(probes + finals, key=lambda p: p.peak, default=None)
    if largest is not None:
        memory["largest probe trial"] = {"where": "GPU" if largest.on_gpu else "host", "trial": largest.label(), "parts": largest.parts}
        train_pages = max(r["bytes"] for r in storage if r["split"] == "train")
        memory["node page cache"] = {"where": "host (shared by a node's trials)", "parts": {
            "largest cached train split (float16, memory-mapped once per node)": train_pages}}

    for bb, sh in shapes.items():
        if not image:
            continue
        tc = cfg.train_config()
        on_gpu = res.image_trial.gpu > 0
        micro = tc.micro_batch or (tc.batch_size if on_gpu else 32)
        parts = {"weights + gradients + SGD momentum (float32)": 3 * sh.params * F32,
                 f"saved activations of a micro-batch of {micro} ({'bf16' if on_gpu else 'float32'})": int(micro * sh.saved_f32 * (a.bf16_saved_ratio if on_gpu else 1))}
        memory[f"image trial ({bb.name})"] = {"where": "GPU" if on_gpu else "host", "parts": parts}
        need = sum(parts.values())
        for where, granted in _granted(res.image_trial, gpu_mem):
            planned = need if where == "GPU" or not on_gpu else a.worker_base_bytes + 3 * sh.params * F32
            if planned > granted:
                fix = (f"resources.image_trial.gpu >= {_share(planned, gpu_mem)}" if where == "GPU" and planned <= gpu_mem
                       else "image_training.micro_batch smaller" + ("" if where == "GPU" else f", or resources.image_trial.memory >= {human_bytes(planned)}"))
                refused.append(Refusal(f"image trial backbone={bb.name} methods={','.join(image)}", planned, granted, where, fix))

    # GPU-hours at the assumed throughput
    ext = sum(images[t] / a.extract_rate(bb.name) for t, bb, _ in needs) / 3600
    ext_test = sum(split_rows[t]["test"] / a.extract_rate(bb.name) for t, bb, _ in needs) / 3600
    tflop = a.probe_tflops * 1e12 * 3600
    tc = cfg.train_config()
    img_cv = sum(dict(s.image_hp)["steps"] * tc.batch_size / a.train_rate(s.backbone.name) for s in image_cv) / 3600
    img_final = sum((steps * tc.batch_size + split_rows[t]["test"]) / a.train_rate(bb.name) for t, bb, _, steps in image_finals) / 3600
    gpu_hours = {"extraction (train + test)": ext, "  of which test (in the final stage when test_features: stream)": ext_test,
                 "probe trials, CV": sum(p.flops() for p in probes) / tflop,
                 "probe trials, final (at each grid's costliest point)": sum(p.flops() for p in finals) / tflop,
                 "image trials, CV": img_cv, "image trials, final (longest schedule)": img_final}
    gpu_hours["total"] = sum(v for k, v in gpu_hours.items() if not k.startswith(" "))
    forward = {"extraction (one per image per backbone)": sum(images[t] for t, _, _ in needs),
               "image-method training (images seen)": sum(dict(s.image_hp)["steps"] * tc.batch_size for s in image_cv)
               + sum(steps * tc.batch_size for *_, steps in image_finals)}
    refused.sort(key=lambda r: r.planned - r.granted, reverse=True)
    return CapacityPlan(cfg.name, list(shapes.values()), sizes, trials, forward, storage, memory, largest, gpu_hours, refused,
                        getattr(cfg, "test_features", None), a)


def check_fits(cfg: SweepConfig, plan: CapacityPlan | None = None) -> None:
    """Raise H2TError (one line: the worst process, planned vs granted, the fix) when any process
    of `cfg` plans more memory than it asks for. Free when nothing asks for GPU or host memory."""
    kinds = (cfg.resources.trial, cfg.resources.extract, cfg.resources.image_trial)
    if plan is None and not any(r.gpu or r.memory for r in kinds):
        return
    plan = plan or plan_capacity(cfg)
    if plan.refused:
        raise H2TError(f"{cfg.name}: {plan.refused[0].line(len(plan.refused) - 1)}")
