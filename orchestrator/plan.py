"""From a validated config to the work: extraction keys, CV trials, final trials.

A trial spec is one Tune trial: a (task, backbone, method, seed, fold) and the hps that
share its feature matrix (trained together as one wide head). Each hp inside it has its
own deterministic trial key, which is what MLflow records and what resume skips.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from head2toe.hashing import short_hash
from head2toe.methods import METHODS, HParams
from orchestrator.config import BackboneConfig, SweepConfig

FINAL_FOLD = "test"


@dataclass(frozen=True)
class TrialSpec:
    stage: str  # "cv" or "final"
    task: str
    backbone: BackboneConfig
    method: str
    seed: int
    fold: int | None  # None for final trials (train on all, score on test)
    hps: tuple[HParams, ...] = field(default_factory=tuple)
    image_hp: tuple[tuple[str, object], ...] = ()  # image-level methods: their own hp dict

    @property
    def target_size(self) -> int | None:
        return self.hps[0].target_size if self.hps else None

    def key_for(self, hp: HParams | None = None) -> str:
        body = {
            "stage": self.stage, "task": self.task, "backbone": self.backbone.identity(), "method": self.method,
            "seed": self.seed, "fold": FINAL_FOLD if self.fold is None else self.fold,
            "hp": asdict(hp) if hp is not None else dict(self.image_hp),
        }
        return short_hash(body, 20)

    def keys(self) -> list[str]:
        return [key for key, _ in self.runs()]

    def hp_params(self, hp: HParams) -> dict:
        """MLflow params of one feature-method hp (keep fractions as a comma list in CV)."""
        params = {"lr": hp.lr, "steps": hp.steps, "coef": hp.coef, "target_size": hp.target_size}
        if METHODS[self.method].needs_keep_fractions:
            params["keep_fraction" if self.stage == "final" else "keep_fractions"] = ",".join(repr(float(f)) for f in hp.keep_fractions)
        return params

    def runs(self) -> list[tuple[str, dict]]:
        """(trial key, MLflow hp params) of every run this trial records: one per feature hp,
        or one for an image-level trial."""
        if not self.hps:
            return [(self.key_for(), {k: v for k, v in self.image_hp if v is not None})]
        return [(self.key_for(h), self.hp_params(h)) for h in self.hps]

    def name(self) -> str:
        fold = "test" if self.fold is None else f"f{self.fold}"
        size = f"_T{self.target_size}" if self.target_size else ""
        point = f"_{self.key_for()[:6]}" if self.image_hp else ""
        return f"{self.stage}_{self.task}_{self.backbone.name}_{self.method}_s{self.seed}_{fold}{size}{point}"

    def without(self, finished: set[str]) -> "TrialSpec | None":
        """This spec reduced to its unfinished hps (None when all are finished)."""
        if not self.hps:
            return None if self.key_for() in finished else self
        left = tuple(h for h in self.hps if self.key_for(h) not in finished)
        return replace(self, hps=left) if left else None


def cv_specs(cfg: SweepConfig) -> list[TrialSpec]:
    """Every CV trial; hps that share a target size are batched unless batch_hparams is off."""
    specs: list[TrialSpec] = []
    for task in cfg.tasks:
        for bb in cfg.backbones:
            for method, grid in cfg.feature_grids().items():
                groups: dict[int, list[HParams]] = {}
                for hp in grid.hparams():
                    groups.setdefault(hp.target_size, []).append(hp)
                for seed in cfg.cv_seeds:
                    for fold in cfg.folds:
                        for hps in groups.values():
                            chunks = [hps] if cfg.batch_hparams else [[h] for h in hps]
                            specs += [TrialSpec("cv", task, bb, method, seed, fold, tuple(c)) for c in chunks]
    return specs


def image_cv_specs(cfg: SweepConfig) -> list[TrialSpec]:
    """One trial per task x backbone x image method x seed x fold x grid point."""
    return [
        TrialSpec("cv", task, bb, method, seed, fold, image_hp=tuple(sorted(hp.as_dict().items())))
        for task in cfg.tasks for bb in cfg.backbones for method, points in cfg.image_grids().items()
        for seed in cfg.cv_seeds for fold in cfg.folds for hp in points
    ]


def final_specs(cfg: SweepConfig, best: dict[tuple[str, str, str], dict]) -> list[TrialSpec]:
    """One final trial per task x backbone x method x seed with the CV-chosen configuration.

    `best[(task, backbone, method)]` is `head2toe.protocol.choose_best`'s output.
    """
    specs = []
    for task in cfg.tasks:
        for bb in cfg.backbones:
            for method in cfg.feature_grids():
                b = best.get((task, bb.name, method))
                if b is None:
                    continue
                kf = (b["keep_fraction"],) if b.get("keep_fraction") and METHODS[method].needs_keep_fractions else ()
                hp = HParams(b["lr"], int(b["steps"]), b["coef"], int(b["target_size"]), kf)
                specs += [TrialSpec("final", task, bb, method, seed, None, (hp,)) for seed in cfg.seeds]
            for method, points in cfg.image_grids().items():
                b = best.get((task, bb.name, method))
                if b is None:
                    continue
                chosen = next(p for p in points if _same_point(p.as_dict(), b))
                specs += [TrialSpec("final", task, bb, method, seed, None, image_hp=tuple(sorted(chosen.as_dict().items())))
                          for seed in cfg.seeds]
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
