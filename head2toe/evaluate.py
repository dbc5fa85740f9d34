"""Run one method on one task with the paper's protocol (what `h2t run` does).

Without a single fixed configuration the grid is searched by 5-fold CV on the training
set, the best mean validation accuracy wins, and that configuration is retrained on all
training data and scored on test.
"""
from __future__ import annotations

import time


from head2toe.methods import EvalResult, FeatureMethod, HParams, selecting_methods
from head2toe.protocol import choose_best, cv_folds, expand_grid
from head2toe.provider import FeatureProvider
from head2toe.tasks.base import Task


def _by_target(grid: list[HParams]) -> dict[int, list[HParams]]:
    out: dict[int, list[HParams]] = {}
    for h in grid:
        out.setdefault(h.target_size, []).append(h)
    return out


def result_row(r: EvalResult, **extra) -> dict:
    return {**r.hp.as_dict(), "keep_fraction": r.keep_fraction, "accuracy": r.accuracy,
            "n_features_total": r.n_features_total, "n_features_kept": r.n_features_kept, "train_loss": r.train_loss, **extra}


def cross_validate(provider: FeatureProvider, task: Task, method: FeatureMethod, grid: list[HParams], seed: int = 0,
                   folds: list[int] | None = None, device=None) -> list[dict]:
    """Validation rows (one per hp x keep fraction x fold)."""
    rows = []
    for t, hps in _by_target(grid).items():
        train = provider.get(task, task.cv_split, [t])[t]
        train.check_finite()
        train.check_labels(task.num_classes)
        splits = cv_folds(len(train))
        x = method.matrix(train)  # one float32 matrix; folds index its rows
        for k in folds if folds is not None else range(len(splits)):
            tr, va = splits[k]
            heads = method.fit(train, hps, task.num_classes, seed=seed, device=device, rows=tr, x=x)
            correct = method.score(heads, train, x[va], rows=va)
            rows += [result_row(h.result(c, len(va)), fold=k) for h, c in zip(heads, correct)]
    return rows


def final_run(provider: FeatureProvider, task: Task, method: FeatureMethod, hp: HParams, seed: int = 0, device=None) -> EvalResult:
    """Train on all training data with `hp`, score on test."""
    feats = provider.get(task, "train", [hp.target_size])[hp.target_size]
    test = provider.get(task, "test", [hp.target_size])[hp.target_size]
    for split in (feats, test):
        split.check_finite()
        split.check_labels(task.num_classes)
    (r,) = method.evaluate(feats, test, [hp], task.num_classes, seed=seed, device=device)[:1]
    return r


def run_protocol(provider: FeatureProvider, task: Task, method: FeatureMethod, grid: list[HParams], seed: int = 0,
                 fold: int | None = None, device=None) -> dict:
    """CV-select (when the grid has more than one point), then the final test run; or, with
    `fold`, the validation accuracy of every grid point on that fold."""
    start = time.perf_counter()
    out: dict = {"task": task.name, "backbone": provider.backbone.name, "method": method.name, "seed": seed}
    if fold is not None:
        rows = cross_validate(provider, task, method, grid, seed, folds=[fold], device=device)
        best = choose_best(rows)
        row = next(r for r in rows if r["accuracy"] == best["mean_accuracy"])
        out.update(fold=fold, val_accuracy=best["mean_accuracy"], n_features_total=row["n_features_total"],
                   n_features_kept=row["n_features_kept"], results=rows, **_hp_fields(best))
    else:
        n_configs = sum(max(1, len(h.keep_fractions)) for h in grid)
        if n_configs > 1:
            rows = cross_validate(provider, task, method, grid, seed, device=device)
            best = choose_best(rows)
            hp = HParams(best["lr"], best["steps"], best["coef"], best["target_size"],
                         (best["keep_fraction"],) if best["keep_fraction"] else ())
            out.update(cv_accuracy=best["mean_accuracy"], cv_results=rows)
        else:
            hp = grid[0]
        r = final_run(provider, task, method, hp, seed, device)
        out.update(test_accuracy=r.accuracy, n_features_total=r.n_features_total, n_features_kept=r.n_features_kept,
                   train_loss=r.train_loss, kept_per_layer={k: int(len(v)) for k, v in r.kept.items() if len(v)},
                   **_hp_fields({**hp.as_dict(), "keep_fraction": r.keep_fraction}))
    out["forward_passes"] = provider.forward_passes
    out["wall_s"] = round(time.perf_counter() - start, 2)
    return out


def _hp_fields(d: dict) -> dict:
    return {k: d[k] for k in ("lr", "steps", "coef", "target_size", "keep_fraction")}


def fixed_or_grid(method: FeatureMethod, default: dict, **given) -> list[HParams]:
    """The default grid with every dimension the user fixed narrowed to their value."""
    def pick(name):
        v = given.get(name)
        return [v] if v is not None else list(default[name])

    fractions = pick("keep_fractions") if method.needs_keep_fractions else []
    if given.get("keep_fractions") is not None and not method.needs_keep_fractions:
        raise ValueError(f"--keep-fraction applies to {' and '.join(selecting_methods())}, not {method.name!r}")
    return expand_grid(pick("lr"), pick("steps"), pick("coef"), pick("target_size"), fractions)
