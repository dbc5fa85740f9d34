"""Feature-level transfer methods behind one interface: `fit` heads on train features, `score`
them on any chunk of rows, or `evaluate` (both, one chunk).

All of them are linear probes on cached pooled activations; they differ in which layers
they read, the penalty, and whether a second probe is trained on selected features.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from head2toe.backbones import PRE_LOGITS
from head2toe.features import LayerFeatures
from head2toe.hparams import HParams
from head2toe.image_methods.config import IMAGE_METHODS, ImageMethod
from head2toe.probe import Probe, ProbeConfig, train_probes, train_probes_stacked
from head2toe.registry import Registry, unknown
from head2toe.selection import count_kept, select_features, select_layers

PRELOGITS = PRE_LOGITS  # the layer Linear reads


@dataclass
class EvalResult:
    """Accuracy of one (hp, keep fraction) on an evaluation split, plus what it kept."""

    method: str
    hp: HParams
    keep_fraction: float | None
    accuracy: float
    n_features_total: int
    n_features_kept: int
    train_loss: float
    kept: dict[str, np.ndarray] = field(default_factory=dict)
    widths: dict[str, int] = field(default_factory=dict)  # input layer widths (what `kept` indexes)

    def key(self) -> tuple:
        return (self.hp.lr, self.hp.steps, self.hp.coef, self.hp.target_size, self.keep_fraction or 0.0)


@dataclass(frozen=True)
class FeatureMethod:
    """A probe method over cached features.

    `layers`: "pre_logits" (Linear) or "all". `selection`: None, "features" (Head2Toe) or
    "layers" (the layers-vs-features ablation).
    """

    name: str
    penalty: str
    layers: str = "all"
    selection: str | None = None
    description: str = ""

    @property
    def needs_keep_fractions(self) -> bool:
        return self.selection is not None

    def input_layers(self, available: list[str]) -> list[str]:
        if self.layers == PRELOGITS:
            if PRELOGITS in available:
                return [PRELOGITS]
            members = [n for n in available if n.endswith("/" + PRELOGITS)]  # a composite: every member's pre-logits
            if not members:
                raise KeyError(f"method {self.name!r} needs layer {PRELOGITS!r}; features have {available[:5]}...")
            return members
        return list(available)

    def fit(
        self,
        train: LayerFeatures,
        hps: list[HParams],
        num_classes: int,
        seed: int = 0,
        device: torch.device | str | None = None,
        rows: np.ndarray | None = None,
        x: torch.Tensor | None = None,
    ) -> list[FittedHead]:
        """Train every hp (and, with selection, its second stage per keep fraction) on `train`,
        or only its `rows` (a CV fold). `x` is `train.matrix()` of this method's input layers
        when the caller already built it (one float32 matrix shared by folds and methods).

        All hps must share one target size (they read the same features); the first-stage
        heads of all hps are trained together as one wide head.
        """
        if len({h.target_size for h in hps}) > 1:
            raise ValueError("fit() takes hps of one target size; group them by target size first")
        names = self.input_layers(train.layer_names)
        tr = train.subset(names)
        if x is None:
            x = tr.matrix()
        labels = tr.labels if rows is None else tr.labels[rows]
        configs = [ProbeConfig(h.lr, h.steps, self.penalty, h.coef) for h in hps]
        heads = train_probes(x, tr.labels, num_classes, configs, seed=seed, device=device, rows=rows)
        total = tr.n_features
        fitted: list[FittedHead] = []
        selected: dict[int, list[tuple]] = {}  # n kept -> [(hp index, fraction, kept)], trained together
        for i, (h, head) in enumerate(zip(hps, heads)):
            if self.selection is None:
                fitted.append(FittedHead(self.name, h, None, head, total, tr.widths))
                continue
            scores = head.feature_scores()
            select = select_features if self.selection == "features" else select_layers
            for f in h.keep_fractions or (1.0,):
                kept = select(scores, tr.widths, f)
                selected.setdefault(count_kept(kept), []).append((i, f, kept))
        by_choice: dict[tuple[int, float], FittedHead] = {}
        for group in selected.values():
            second = train_probes_stacked([tr.matrix(kept, rows) for _, _, kept in group], labels, num_classes,
                                          [ProbeConfig(hps[i].lr, hps[i].steps) for i, _, _ in group], seed, device)
            for (i, f, kept), probe in zip(group, second):
                by_choice[(i, f)] = FittedHead(self.name, hps[i], f, probe, total, tr.widths, kept)
        return fitted + [by_choice[k] for k in sorted(by_choice)]

    def matrix(self, features: LayerFeatures, rows: np.ndarray | None = None) -> torch.Tensor:
        """The float32 input matrix of this method (its layers, unit-normalised per layer)."""
        return features.subset(self.input_layers(features.layer_names)).matrix(rows=rows)

    def score(self, heads: list[FittedHead], chunk: LayerFeatures, x: torch.Tensor | None = None,
              rows: np.ndarray | None = None) -> list[int]:
        """Correct predictions of each fitted head on `chunk` (or its `rows`): any rows of a split
        will do, since per-layer normalisation is row-local, so summing chunks' counts gives the
        whole split's accuracy. `x` is `self.matrix(chunk, rows)` when the caller built it."""
        ch = chunk.subset(self.input_layers(chunk.layer_names))
        y = torch.tensor(ch.labels if rows is None else ch.labels[rows])  # a copy: cached labels are read-only maps
        out = []
        for head in heads:
            if head.kept is None:
                x = ch.matrix(rows=rows) if x is None else x
                m = x
            else:
                m = ch.matrix(head.kept, rows)
            out.append(int((head.probe.logits(m).argmax(dim=1).cpu() == y).sum()))
        return out

    def evaluate(
        self,
        train: LayerFeatures,
        evaluation: LayerFeatures,
        hps: list[HParams],
        num_classes: int,
        seed: int = 0,
        device: torch.device | str | None = None,
    ) -> list[EvalResult]:
        """Train on `train`, score on `evaluation`, for every hp (and keep fraction): `fit`, then
        `score` with the evaluation split as one chunk."""
        heads = self.fit(train, hps, num_classes, seed, device)
        correct = self.score(heads, evaluation)
        return [h.result(c, len(evaluation)) for h, c in zip(heads, correct)]


@dataclass
class FittedHead:
    """A trained head of one (hp, keep fraction): scores any chunk of rows of a split."""

    method: str
    hp: HParams
    keep_fraction: float | None
    probe: Probe
    n_features_total: int
    widths: dict[str, int]  # input layer widths (what `kept` indexes)
    kept: dict[str, np.ndarray] | None = None  # None: every input feature

    @property
    def n_features_kept(self) -> int:
        return self.n_features_total if self.kept is None else count_kept(self.kept)

    def result(self, correct: int, n: int) -> EvalResult:
        return EvalResult(self.method, self.hp, self.keep_fraction, correct / n if n else 0.0, self.n_features_total,
                          self.n_features_kept, self.probe.final_loss, self.kept or {}, self.widths if self.kept else {})


METHODS: Registry[FeatureMethod] = Registry("feature method")
for _m in [
    FeatureMethod("linear", "l2", layers=PRELOGITS, description="pre-logits features only (Linear)"),
    FeatureMethod("all_l2", "l2", description="all layers, L2 penalty, no selection"),
    FeatureMethod("all_l1", "l1", description="all layers, L1 penalty, no selection"),
    FeatureMethod("all_group", "group", description="all layers, group-lasso penalty, no selection"),
    FeatureMethod("head2toe", "group", selection="features", description="group-lasso scores, keep top features, retrain"),
    FeatureMethod("head2toe_layers", "group", selection="layers", description="ablation: select layers by mean score at the same budget, retrain"),
]:
    METHODS.register(_m.name, _m)


def selecting_methods() -> list[str]:
    """The feature methods that select features, so take keep fractions."""
    return [n for n, m in METHODS.items() if m.needs_keep_fractions]


def method_names() -> list[str]:
    """Every method, feature methods first (what `--method` and a config's `methods:` accept)."""
    return [*METHODS, *IMAGE_METHODS]


def is_image_method(name: str) -> bool:
    return name in IMAGE_METHODS


def get_method(name: str) -> FeatureMethod | ImageMethod:
    """A feature method (head2toe.methods) or an image method (head2toe.image_methods) by name."""
    if name in IMAGE_METHODS:
        return IMAGE_METHODS[name]
    if name in METHODS:
        return METHODS[name]
    raise unknown("method", name, method_names())
