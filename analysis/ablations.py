"""Ablations read from the sweep's runs: layers vs features at equal budgets, and the
"bitter lesson" (accuracy vs target size and vs number of layers used)."""
from __future__ import annotations

import pandas as pd

from analysis.catalog import order_tasks
from analysis.runs import final_runs, keep_fraction_long

HP = ["lr", "steps", "coef"]


def _paper_order(frame: pd.DataFrame, *then: str) -> pd.DataFrame:
    """Rows by backbone, then task in the paper's order, then `then`."""
    rank = {t: i for i, t in enumerate(order_tasks(set(frame["task"])))}
    return (frame.assign(_rank=frame["task"].map(rank)).sort_values(["backbone", "_rank", *then])
            .drop(columns="_rank").reset_index(drop=True))


def layers_vs_features(runs: pd.DataFrame) -> pd.DataFrame:
    """Per backbone, task and keep fraction that both head2toe and head2toe_layers were
    cross-validated at: each method's best mean CV accuracy (over lr, steps, coef, target size;
    mean over folds and seeds) and the features it kept. Equal keep fraction = equal budget
    int(F * f): both keep exactly that many features (head2toe_layers: the best layers by mean
    score, the last one cut at the budget)."""
    kf = keep_fraction_long(runs)
    kf = kf[kf["method"].isin(["head2toe", "head2toe_layers"])]
    cols = ["backbone", "task", "keep_fraction", "features_acc", "layers_acc", "features_kept", "layers_kept"]
    if kf.empty:
        return pd.DataFrame(columns=cols)
    keys = ["backbone", "task", "method", "keep_fraction"]
    per_hp = kf.groupby(keys + HP + ["target_size"]).agg(acc=("val_accuracy", "mean"), kept=("n_features_kept", "mean"))
    best = per_hp.reset_index().sort_values("acc").drop_duplicates(keys, keep="last")
    wide = best.pivot_table(index=["backbone", "task", "keep_fraction"], columns="method", values=["acc", "kept"])
    if ("acc", "head2toe") not in wide or ("acc", "head2toe_layers") not in wide:
        return pd.DataFrame(columns=cols)
    out = pd.DataFrame({
        "features_acc": 100 * wide[("acc", "head2toe")], "layers_acc": 100 * wide[("acc", "head2toe_layers")],
        "features_kept": wide[("kept", "head2toe")], "layers_kept": wide[("kept", "head2toe_layers")],
    }).dropna(subset=["features_acc", "layers_acc"])
    return _paper_order(out.reset_index()[cols], "keep_fraction")


def accuracy_vs_target_size(runs: pd.DataFrame) -> pd.DataFrame:
    """Per backbone, task, method and target size: the best mean CV accuracy (%) over the other
    hyper-parameters. Produced by CV trials whose grid lists several `target_size`s (the paper's
    grid has 1024, 4096, 16384); with one target size each curve is a single point."""
    cols = ["backbone", "task", "method", "target_size", "val_accuracy", "n_features_total"]
    if "val_accuracy" not in runs:
        return pd.DataFrame(columns=cols)
    cv = runs[(runs["stage"] == "cv") & runs["val_accuracy"].notna()]
    if cv.empty:
        return pd.DataFrame(columns=cols)
    keys = ["backbone", "task", "method", "target_size"]
    per_hp = cv.groupby(keys + HP).agg(val_accuracy=("val_accuracy", "mean"), n_features_total=("n_features_total", "mean"))
    best = per_hp.reset_index().sort_values("val_accuracy").drop_duplicates(keys, keep="last")
    best["val_accuracy"] *= 100
    return _paper_order(best[cols], "method", "target_size")


def accuracy_vs_layers(runs: pd.DataFrame, selections_by_run: dict[str, dict]) -> pd.DataFrame:
    """Per final run of a selection method with a selection artefact: test accuracy (%) against
    the number of layers its kept features come from, and the number of candidate layers."""
    final = final_runs(runs)
    final = final[final["run_id"].isin(selections_by_run)]
    rows = []
    for r in final.itertuples():
        sel = selections_by_run[r.run_id]
        rows.append({"backbone": r.backbone, "task": r.task, "method": r.method, "seed": r.seed,
                     "target_size": r.target_size, "keep_fraction": r.keep_fraction,
                     "layers_used": sum(1 for v in sel["layers"].values() if len(v)), "layers_total": len(sel["layers"]),
                     "test_accuracy": 100 * r.test_accuracy})
    return pd.DataFrame(rows, columns=["backbone", "task", "method", "seed", "target_size", "keep_fraction",
                                       "layers_used", "layers_total", "test_accuracy"])


def features_vs_layers_summary(lvf: pd.DataFrame) -> str:
    """One line: at how many (task, keep fraction) pairs selecting features beat selecting layers."""
    if lvf.empty:
        return ""
    diff = (lvf["features_acc"] - lvf["layers_acc"]).round(6)
    return (f"Features beat layers at {int((diff > 0).sum())} of {len(lvf)} (task, keep fraction) pairs "
            f"({int((diff == 0).sum())} ties), by {diff.mean():+.1f} points on average (the paper: selecting features "
            "is better than selecting layers at equal budget).")


def target_size_summary(sizes: pd.DataFrame) -> str:
    """One line per method with two or more target sizes: on how many tasks its largest target
    size beat its smallest (best CV accuracy)."""
    lines = []
    for (bb, method), d in sizes.groupby(["backbone", "method"], sort=False):
        per_task = [g.sort_values("target_size")["val_accuracy"].to_numpy() for _, g in d.groupby("task") if g["target_size"].nunique() > 1]
        if not per_task:
            continue
        lo, hi = int(d["target_size"].min()), int(d["target_size"].max())
        diff = [round(float(v[-1] - v[0]), 6) for v in per_task]
        lines.append(f"{bb} {method}: T={hi} beats T={lo} on {sum(d > 0 for d in diff)} of {len(diff)} tasks "
                     f"({sum(d == 0 for d in diff)} ties; {sum(diff) / len(diff):+.1f} points on average).")
    return " ".join(lines)
