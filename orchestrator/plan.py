"""From a validated config to the work: extraction keys, CV trials, final trials.

Two kinds of trial spec: a `FeatureTrial` is a (task, backbone, method, seed, fold) and the
probe hps that share its feature matrix (trained together as one wide head); an
`ImageTrial` is one grid point of an image-level method (it trains the backbone). Each hp
of a spec has its own deterministic trial key, which is what MLflow records and what
resume skips.

A Tune trial is one of: a `FoldTrial` (a CV feature spec and the cache key of its split),
a `FinalGroup` (every feature-method final run of a task x backbone, fitted and then scored
in one pass over the test rows), an `ImageRun` (an image spec). Tune's `param_space`
carries only the trial's index; the trials themselves reach workers as these objects.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Union

from head2toe.hashing import short_hash
from head2toe.image_methods.config import ImageHParams
from head2toe.methods import METHODS, HParams
from orchestrator.config import BackboneConfig, SweepConfig

FINAL_FOLD = "test"


@dataclass(frozen=True)
class _Spec:
    stage: str  # "cv" or "final"
    task: str
    backbone: BackboneConfig
    method: str
    seed: int
    fold: int | None  # None for final trials (train on all, score on test)

    def _key(self, hp: dict) -> str:
        body = {
            "stage": self.stage, "task": self.task, "backbone": self.backbone.identity(), "method": self.method,
            "seed": self.seed, "fold": FINAL_FOLD if self.fold is None else self.fold, "hp": hp,
        }
        return short_hash(body, 20)

    def _name(self, suffix: str) -> str:
        fold = "test" if self.fold is None else f"f{self.fold}"
        return f"{self.stage}_{self.task}_{self.backbone.name}_{self.method}_s{self.seed}_{fold}{suffix}"

    def keys(self) -> list[str]:
        return [key for key, _ in self.runs()]

    def runs(self) -> list[tuple[str, dict]]:
        raise NotImplementedError


@dataclass(frozen=True)
class FeatureTrial(_Spec):
    """Probes on cached features: one run per hp, all hps of one target size."""

    hps: tuple[HParams, ...]

    @property
    def target_size(self) -> int:
        return self.hps[0].target_size

    def key_for(self, hp: HParams) -> str:
        return self._key(asdict(hp))

    def hp_params(self, hp: HParams) -> dict:
        """MLflow params of one hp (keep fractions as a comma list in CV)."""
        params = {"lr": hp.lr, "steps": hp.steps, "coef": hp.coef, "target_size": hp.target_size}
        if METHODS[self.method].needs_keep_fractions:
            params["keep_fraction" if self.stage == "final" else "keep_fractions"] = ",".join(repr(float(f)) for f in hp.keep_fractions)
        return params

    def runs(self) -> list[tuple[str, dict]]:
        """(trial key, MLflow hp params) of every run this trial records: one per hp."""
        return [(self.key_for(h), self.hp_params(h)) for h in self.hps]

    def name(self) -> str:
        return self._name(f"_T{self.target_size}")

    def without(self, finished: set[str]) -> "FeatureTrial | None":
        """This spec reduced to its unfinished hps (None when all are finished)."""
        left = tuple(h for h in self.hps if self.key_for(h) not in finished)
        return replace(self, hps=left) if left else None


@dataclass(frozen=True)
class ImageTrial(_Spec):
    """An image-level method (finetune, scratch, head2toe_ft) at one grid point: one run."""

    hp: ImageHParams

    @property
    def key(self) -> str:
        return self._key(self.hp.as_dict())

    def params(self) -> dict:
        return {k: v for k, v in sorted(self.hp.as_dict().items()) if v is not None}

    def runs(self) -> list[tuple[str, dict]]:
        return [(self.key, self.params())]

    def name(self) -> str:
        return self._name(f"_{self.key[:6]}")

    def without(self, finished: set[str]) -> "ImageTrial | None":
        return None if self.key in finished else self


TrialSpec = Union[FeatureTrial, ImageTrial]


@dataclass(frozen=True)
class FoldTrial:
    """A CV feature trial: `spec` on its fold of the cached CV split `key`."""

    spec: FeatureTrial
    key: str
    num_classes: int

    @property
    def name(self) -> str:
        return self.spec.name()

    @property
    def specs(self) -> tuple[FeatureTrial, ...]:
        return (self.spec,)


@dataclass(frozen=True)
class FinalGroup:
    """Every feature-method final run of one task x backbone. `keys`: "train/T" and (cached
    test features) "test/T" cache keys per target size T; `cv_accuracy` per spec name."""

    specs: tuple[FeatureTrial, ...]
    keys: dict[str, str]
    num_classes: int
    test_features: str  # "cache" or "stream"
    cv_accuracy: dict[str, float]

    @property
    def name(self) -> str:
        s = self.specs[0]
        return f"final_{s.task}_{s.backbone.name}_features"


@dataclass(frozen=True)
class ImageRun:
    """An image-level trial; `cv_accuracy` is the chosen point's CV accuracy (final stage)."""

    spec: ImageTrial
    num_classes: int
    cv_accuracy: float | None = None

    @property
    def name(self) -> str:
        return self.spec.name()

    @property
    def specs(self) -> tuple[ImageTrial, ...]:
        return (self.spec,)


TuneTrial = Union[FoldTrial, FinalGroup, ImageRun]


def _single_candidate_choices(cfg: SweepConfig) -> dict[str, dict]:
    """With `cv_single_candidate: skip`, the methods whose grid holds one candidate (one hp and
    at most one keep fraction; one image grid point), each with that candidate."""
    if cfg.cv_single_candidate != "skip":
        return {}
    chosen: dict[str, dict] = {}
    for method, grid in cfg.feature_grids().items():
        hps = grid.hparams()
        if len(hps) == 1 and len(hps[0].keep_fractions) <= 1:
            hp = hps[0]
            chosen[method] = {"lr": hp.lr, "steps": hp.steps, "coef": hp.coef, "target_size": hp.target_size,
                              "keep_fraction": hp.keep_fractions[0] if hp.keep_fractions else None}
    for method, points in cfg.image_grids().items():
        if len(points) == 1:
            chosen[method] = points[0].as_dict()
    return chosen


def single_candidates(cfg: SweepConfig) -> dict[tuple[str, str, str], dict]:
    """The methods `_single_candidate_choices` names need no CV: it could only choose their one
    candidate. Returns `choose_best`-shaped choices per (task, backbone, method), without a
    CV accuracy."""
    return {(task, bb.name, method): {**c, "mean_accuracy": None, "n_folds": 0}
            for task in cfg.tasks for bb in cfg.backbones for method, c in _single_candidate_choices(cfg).items()}


def _cv_methods(cfg: SweepConfig) -> set[str]:
    """Methods that get CV trials (all but the single candidates)."""
    return set(cfg.methods) - set(_single_candidate_choices(cfg))


def cv_specs(cfg: SweepConfig) -> list[FeatureTrial]:
    """Every CV trial; hps that share a target size are batched unless batch_hparams is off."""
    specs: list[FeatureTrial] = []
    cv_methods = _cv_methods(cfg)
    for task in cfg.tasks:
        for bb in cfg.backbones:
            for method, grid in cfg.feature_grids().items():
                if method not in cv_methods:
                    continue
                groups: dict[int, list[HParams]] = {}
                for hp in grid.hparams():
                    groups.setdefault(hp.target_size, []).append(hp)
                for seed in cfg.cv_seeds:
                    for fold in cfg.folds:
                        for hps in groups.values():
                            chunks = [hps] if cfg.batch_hparams else [[h] for h in hps]
                            specs += [FeatureTrial("cv", task, bb, method, seed, fold, tuple(c)) for c in chunks]
    return specs


def image_cv_specs(cfg: SweepConfig) -> list[ImageTrial]:
    """One trial per task x backbone x image method x seed x fold x grid point."""
    cv_methods = _cv_methods(cfg)
    return [
        ImageTrial("cv", task, bb, method, seed, fold, hp)
        for task in cfg.tasks for bb in cfg.backbones for method, points in cfg.image_grids().items()
        if method in cv_methods for seed in cfg.cv_seeds for fold in cfg.folds for hp in points
    ]


def final_specs(cfg: SweepConfig, best: dict[tuple[str, str, str], dict]) -> list[TrialSpec]:
    """One final trial per task x backbone x method x seed with the CV-chosen configuration.

    `best[(task, backbone, method)]` is `head2toe.protocol.choose_best`'s output.
    """
    specs: list[TrialSpec] = []
    for task in cfg.tasks:
        for bb in cfg.backbones:
            for method in cfg.feature_grids():
                b = best.get((task, bb.name, method))
                if b is None:
                    continue
                kf = (b["keep_fraction"],) if b.get("keep_fraction") and METHODS[method].needs_keep_fractions else ()
                hp = HParams(b["lr"], int(b["steps"]), b["coef"], int(b["target_size"]), kf)
                specs += [FeatureTrial("final", task, bb, method, seed, None, (hp,)) for seed in cfg.seeds]
            for method, points in cfg.image_grids().items():
                b = best.get((task, bb.name, method))
                if b is None:
                    continue
                chosen = next(p for p in points if _same_point(p.as_dict(), b))
                specs += [ImageTrial("final", task, bb, method, seed, None, chosen) for seed in cfg.seeds]
    return specs


def _same_point(point: dict, best: dict) -> bool:
    return all(best.get(k) == v or (v is None and best.get(k) in (None, 0.0)) for k, v in point.items())


def extraction_needs(cfg: SweepConfig) -> list[tuple[str, BackboneConfig, list[int]]]:
    """(task, backbone, target sizes): each is one forward pass per image per split. Includes
    head2toe_ft's target sizes: its selection reads the same cached features. A composite
    backbone is extracted as its members (each once, shared with the same single backbone)."""
    sizes = sorted({*cfg.target_sizes(), *(p.target_size for pts in cfg.image_grids().values() for p in pts if p.target_size)})
    singles = list(dict.fromkeys(m for bb in cfg.backbones for m in bb.members()))
    return [(t, bb, sizes) for t in cfg.tasks for bb in singles] if sizes else []
