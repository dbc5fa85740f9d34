"""Sweep configs (YAML), validated before anything runs.

A config names tasks, backbones, methods with their grids, seeds, folds, resources,
where results and features go. Every mistake is reported as one line naming the field
and what is accepted, before Ray starts or a backbone loads.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from head2toe.backbones import COMPOSITE_SEP, PRETRAINED, WEIGHTS, Backbone, check_backbone, composite_members, create_backbone, get_spec
from head2toe.errors import H2TError
from head2toe.hashing import short_hash
from head2toe.image_methods import TrainConfig, expand_image_grid
from head2toe.limits import COEF, KEEP_FRACTION, LR, SEED, STEPS, TARGET_SIZE, Rule
from head2toe.methods import METHODS, FeatureMethod, HParams, get_method, is_image_method, selecting_methods
from head2toe.protocol import FOLDS, check_fold, expand_grid
from head2toe.registry import check_choice
from head2toe.tasks import check_task


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackboneConfig(_Strict):
    name: str
    weights: str = PRETRAINED
    input_size: int | None = Field(default=None, gt=0)
    # finetune and scratch train and score at this resolution (None: input_size); they run the
    # backbone forward and backward per step, so a lower one makes them affordable on a CPU
    image_input_size: int | None = Field(default=None, gt=0)
    checkpoint: str | None = None
    batch_size: int = Field(default=32, gt=0)

    _weights = field_validator("weights")(lambda v: check_choice("weights", v, WEIGHTS))
    _known = field_validator("name")(lambda v: check_backbone(v))  # also "a+b", a composite (docs/multi_backbone.md)

    @model_validator(mode="after")
    def _composite_checkpoint(self) -> "BackboneConfig":
        if self.is_composite and self.checkpoint:
            raise ValueError(f"composite backbone {self.name!r} takes no checkpoint: list its members on their own for that")
        return self

    @property
    def is_composite(self) -> bool:
        return COMPOSITE_SEP in self.name

    def members(self) -> list["BackboneConfig"]:
        """The single backbones whose cache entries a composite reads ([self] for a single one):
        same weights, input size and batch size, so their keys are those of single-backbone runs."""
        if not self.is_composite:
            return [self]
        return [self.model_copy(update={"name": m}) for m in composite_members(self.name)]

    def timm_id(self) -> str:
        """The pinned timm tag (members' tags joined by '+' for a composite): what the name means
        today, so a re-pinned tag gives new trial keys and shows in MLflow."""
        return COMPOSITE_SEP.join(get_spec(m.name).timm_id for m in self.members())

    def create(self, **overrides: Any) -> Backbone:
        """The backbone this config names (head2toe.backbones.create_backbone); `overrides`
        (device, weights, ...) replace or add keyword arguments."""
        return create_backbone(**{"name": self.name, "weights": self.weights, "input_size": self.input_size,
                                  "checkpoint": self.checkpoint, **overrides})

    def identity(self) -> dict:
        return {"name": self.name, "timm_id": self.timm_id(), "weights": self.weights, "input_size": self.input_size,
                "checkpoint": self.checkpoint}


def _all(rule: Rule, values: list) -> list:
    """`values` when each meets `rule` (head2toe.limits: the CLI and the library check the same)."""
    bad = rule.bad(values)
    if bad:
        raise ValueError(f"must be {rule.accepted}, got {bad}")
    return values


class MethodGrid(_Strict):
    """Grid of one method. Keep fractions are evaluated inside each trial (selection methods)."""

    lr: list[float] = Field(min_length=1)
    steps: list[int] = Field(min_length=1)
    coef: list[float] = Field(default=[0.0], min_length=1)
    target_size: list[int] = Field(default=[512], min_length=1)
    keep_fractions: list[float] = Field(default_factory=list)

    _lr = field_validator("lr")(lambda v: _all(LR, v))
    _steps = field_validator("steps")(lambda v: _all(STEPS, v))
    _target_size = field_validator("target_size")(lambda v: _all(TARGET_SIZE, v))
    _coef = field_validator("coef")(lambda v: _all(COEF, v))
    _fractions = field_validator("keep_fractions")(lambda v: _all(KEEP_FRACTION, v))

    def hparams(self) -> list[HParams]:
        return expand_grid(self.lr, self.steps, self.coef, self.target_size, self.keep_fractions)


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(v: int | float | str) -> int:
    """Bytes from an int or a string such as "16GiB", "512 MiB", "2.5GB" (GB = 10^9, GiB = 2^30)."""
    if isinstance(v, bool):
        raise ValueError(f"expected bytes or a size such as '16GiB', got {v!r}")
    if isinstance(v, (int, float)):
        n = float(v)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(v))
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"expected bytes or a size such as '16GiB', '512MiB', '2.5GB', got {v!r}")
        n = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not n > 0:
        raise ValueError(f"must be > 0 bytes, got {v!r}")
    return int(n)


class Resources(_Strict):
    """What one trial (or extraction task) asks Ray for. `memory`: host RAM in bytes (or "16GiB"),
    Ray's `memory` resource; unset asks for none and skips the host-memory check of `h2t plan`."""

    cpu: float = Field(default=1, gt=0)
    gpu: float = Field(default=0, ge=0)
    memory: int | None = None

    _memory = field_validator("memory", mode="before")(lambda v: None if v is None else parse_bytes(v))

    def as_tune(self) -> dict[str, float]:
        return {"cpu": self.cpu, "gpu": self.gpu, **({"memory": self.memory} if self.memory else {})}


class ResourcePlan(_Strict):
    """Per-kind requests, and `gpu_memory`: bytes of one whole GPU of the cluster, which a
    fractional `gpu` share is measured against by `h2t plan` and `h2t sweep`'s pre-Ray check."""

    trial: Resources = Resources()
    # The final trial of a task x backbone fits every final run, holds all their heads and scores
    # them in one pass over the test rows, so it may need more than a CV trial; default: `trial`.
    final_trial: Resources | None = None
    extract: Resources = Resources(cpu=1)
    image_trial: Resources = Resources(cpu=2, gpu=0)
    gpu_memory: int = 80 << 30

    _gpu_memory = field_validator("gpu_memory", mode="before")(lambda v: parse_bytes(v))


class SweepConfig(_Strict):
    name: str
    experiment: str | None = None
    tasks: list[str] = Field(min_length=1)
    backbones: list[BackboneConfig] = Field(min_length=1)
    methods: dict[str, dict[str, Any]] = Field(min_length=1)
    seeds: list[int] = Field(default=[0], min_length=1)
    cv_seeds: list[int] = Field(default=[0], min_length=1)
    folds: list[int] = Field(default=list(FOLDS), min_length=1)
    resources: ResourcePlan = ResourcePlan()
    max_concurrent_trials: int | None = Field(default=None, gt=0)
    max_failures: int = Field(default=2, ge=0)
    batch_hparams: bool = True
    # cache: extraction writes test features too; stream: never stored, the final trial of each
    # (task, backbone) runs the backbone over the test images once with every final head attached
    test_features: Literal["cache", "stream"] = "stream"
    # run: every method gets CV trials; skip: a method whose grid has one candidate goes straight
    # to its final trial (CV could only choose that candidate; its runs carry no cv_accuracy)
    cv_single_candidate: Literal["run", "skip"] = "run"
    image_training: dict[str, Any] = Field(default_factory=dict)  # head2toe.image_methods.TrainConfig fields
    tracking_uri: str | None = None
    cache: str | None = None
    # a split whose missing cache bytes exceed this is extracted in parts, one Ray task each (docs/cache.md)
    extract_shard_bytes: int = Field(default=4 << 30, gt=0)
    data_dir: str | None = None
    expected: dict[str, Any] = Field(default_factory=dict)

    @field_validator("backbones", mode="before")
    @classmethod
    def _backbone_names(cls, v):
        return [{"name": b} if isinstance(b, str) else b for b in (v or [])]

    # a user's folder is checked now (missing, empty, one class, unreadable image), not after Ray starts
    _tasks = field_validator("tasks")(lambda v: [check_task(t) for t in v])
    _seeds = field_validator("seeds", "cv_seeds")(lambda v: _all(SEED, v))
    _folds = field_validator("folds")(lambda v: sorted({check_fold(f) for f in v}))

    @model_validator(mode="after")
    def _methods(self):
        for name, grid in self.methods.items():
            try:
                method = get_method(name)
            except H2TError as e:
                raise ValueError(f"methods: {e}") from None
            if isinstance(method, FeatureMethod):
                try:
                    parsed = MethodGrid(**(grid or {}))
                except ValidationError as e:
                    raise ValueError(f"methods.{name}.{_first_error(e)}") from None
                if method.needs_keep_fractions and not parsed.keep_fractions:
                    raise ValueError(f"methods.{name}.keep_fractions: {name} needs at least one keep fraction {KEEP_FRACTION.accepted}")
                if not method.needs_keep_fractions and parsed.keep_fractions:
                    raise ValueError(f"methods.{name}.keep_fractions: only {' and '.join(selecting_methods())} take keep fractions")
            else:
                try:
                    points = expand_image_grid(name, {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in (grid or {}).items()})
                except (H2TError, TypeError) as e:
                    raise ValueError(f"methods.{name}: {e}") from None
                if not points:
                    raise ValueError(f"methods.{name}: empty grid; give at least lr and steps")
        if "head2toe_ft" in self.methods:
            odd = [b.name for b in self.backbones if b.image_input_size not in (None, b.input_size)]
            if odd:
                raise ValueError(f"backbones: {odd[0]} sets image_input_size, but head2toe_ft trains on the features it "
                                 "selected from the cache at input_size; drop image_input_size or head2toe_ft")
        try:
            self.train_config()
        except (H2TError, TypeError) as e:
            raise ValueError(f"image_training: {e}") from None
        return self

    def train_config(self) -> TrainConfig:
        return TrainConfig(**self.image_training)

    def feature_grids(self) -> dict[str, MethodGrid]:
        return {n: MethodGrid(**g) for n, g in self.methods.items() if n in METHODS}

    def image_grids(self) -> dict[str, list]:
        """Image-level methods and their grid points (head2toe.image_methods.ImageHParams)."""
        return {n: expand_image_grid(n, {k: v if isinstance(v, list) else [v] for k, v in g.items()})
                for n, g in self.methods.items() if is_image_method(n)}

    def final_resources(self) -> Resources:
        """What a feature-method final trial asks for: `resources.final_trial` (else `trial`), and
        with `test_features: stream` at least what extraction asks for (it runs the backbone too)."""
        r = self.resources.final_trial or self.resources.trial
        if self.test_features != "stream":
            return r
        e = self.resources.extract
        memory = max(r.memory or 0, e.memory or 0) or None
        return Resources(cpu=max(r.cpu, e.cpu), gpu=max(r.gpu, e.gpu), memory=memory)

    def target_sizes(self) -> list[int]:
        return sorted({t for g in self.feature_grids().values() for t in g.target_size})

    @property
    def experiment_name(self) -> str:
        return self.experiment or f"h2t-{self.name}"

    def sweep_id(self) -> str:
        """Stable id of what this sweep computes (not where it logs): resuming finds its runs."""
        body = self.model_dump(exclude={"tracking_uri", "cache", "data_dir", "max_concurrent_trials", "resources", "expected", "max_failures",
                                             "test_features", "extract_shard_bytes",
                                             "cv_single_candidate"})  # how features are stored: same results
        return short_hash(body, 12)


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None or "got" in msg else f" (got {got!r})"
    return f"{loc}: {msg}{shown}" if loc else f"{msg}{shown}"


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (list, dict)):
                continue  # unhashable; SafeLoader reports it
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicated key {key!r} (first at line {seen[key] + 1}); keep one", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path, **overrides: Any) -> SweepConfig:
    """Parse and validate a sweep YAML; any problem is one H2TError line naming the field."""
    path = Path(path)
    if not path.is_file():
        raise H2TError(f"config file {str(path)!r} not found; see configs/ for examples")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise H2TError(f"{path}: malformed YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise H2TError(f"{path}: expected a mapping of sweep settings at the top level, got {type(raw).__name__}")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return SweepConfig(**raw)
    except ValidationError as e:
        raise H2TError(f"{path}: {_first_error(e)}") from None
