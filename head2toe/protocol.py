"""The VTAB-1k evaluation protocol: 5-fold CV inside the training set, pick by mean
validation accuracy, retrain on all training data, evaluate on test."""
from __future__ import annotations

import itertools
from collections import defaultdict

import numpy as np

from head2toe.errors import H2TError
from head2toe.hparams import HParams

N_FOLDS = 5
VTAB_TRAIN = 1000
VTAB_VAL = 200
FOLDS = tuple(range(N_FOLDS))


def check_fold(fold: int) -> int:
    """`fold`, or the one-line error naming the folds there are."""
    if fold not in FOLDS:
        raise H2TError(f"fold must be in 0..{N_FOLDS - 1}, got {fold!r}")
    return fold


def cv_folds(n: int, n_folds: int = N_FOLDS) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train_idx, val_idx) per fold over the first min(n, 1000) examples.

    With 1000 examples fold k validates on [200k, 200k+200) and trains on the other 800
    (the paper's protocol); a smaller set is cut into equal fifths the same way.
    """
    m = min(n, VTAB_TRAIN)
    size = m // n_folds
    if size < 1:
        raise ValueError(f"{n} training examples cannot make {n_folds} folds")
    used = np.arange(size * n_folds)
    folds = []
    for k in range(n_folds):
        val = used[k * size : (k + 1) * size]
        train = np.concatenate([used[: k * size], used[(k + 1) * size :]])
        folds.append((train, val))
    return folds


def expand_grid(
    lrs: list[float],
    steps: list[int],
    coefs: list[float],
    target_sizes: list[int],
    keep_fractions: list[float] | None = None,
) -> list[HParams]:
    """Cartesian grid in a fixed order (target size outermost: it decides the features)."""
    kf = tuple(keep_fractions or ())
    return [
        HParams(lr=lr, steps=s, coef=c, target_size=t, keep_fractions=kf)
        for t, lr, s, c in itertools.product(target_sizes, lrs, steps, coefs)
    ]


def choose_best(rows: list[dict]) -> dict:
    """Best configuration by mean validation accuracy over folds.

    `rows` hold keys lr, steps, coef, target_size, keep_fraction, fold, accuracy. Ties go
    to the smallest (target_size, steps, coef, keep_fraction, lr): cheaper, more regular.
    Returns the config with `mean_accuracy` and `n_folds`.
    """
    if not rows:
        raise ValueError("no validation results to choose from")
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        key = (r["target_size"], r["steps"], r["coef"], r.get("keep_fraction") or 0.0, r["lr"])
        groups[key].append(float(r["accuracy"]))
    best_key = min(groups, key=lambda k: (-float(np.mean(groups[k])), k))
    t, s, c, f, lr = best_key
    return {
        "lr": lr,
        "steps": s,
        "coef": c,
        "target_size": t,
        "keep_fraction": f or None,
        "mean_accuracy": float(np.mean(groups[best_key])),
        "n_folds": len(groups[best_key]),
    }
