"""Which features different tasks keep: pairwise overlap of Head2Toe selections and where in
the network each task draws from (the paper: "features have <20% intersection")."""
from __future__ import annotations

import itertools

import pandas as pd

from analysis.catalog import order_tasks
from analysis.runs import final_runs

Selection = dict  # {"layers": {layer: kept column indices}, "widths": {layer: width}}


def feature_set(selection: Selection) -> set[tuple[str, int]]:
    """Kept features as (layer, column) pairs: a feature's identity within one backbone and target size."""
    return {(layer, int(i)) for layer, idx in selection["layers"].items() for i in idx}


def overlap_coefficient(a: set, b: set) -> float:
    """|A ∩ B| / min(|A|, |B|): 1 when the smaller selection lies inside the larger."""
    return len(a & b) / min(len(a), len(b)) if a and b else float("nan")


def iou(a: set, b: set) -> float:
    """|A ∩ B| / |A ∪ B| (Jaccard)."""
    return len(a & b) / len(a | b) if a or b else float("nan")


def pairwise_overlap(selections: dict[str, Selection]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Task x task matrices of the overlap coefficient and of IoU (diagonal 1)."""
    names = list(selections)
    sets = {t: feature_set(s) for t, s in selections.items()}
    coef = pd.DataFrame(1.0, index=names, columns=names)
    jac = coef.copy()
    for a, b in itertools.combinations(names, 2):
        coef.loc[a, b] = coef.loc[b, a] = overlap_coefficient(sets[a], sets[b])
        jac.loc[a, b] = jac.loc[b, a] = iou(sets[a], sets[b])
    return coef, jac


def layer_share(selections: dict[str, Selection]) -> pd.DataFrame:
    """Task x layer: the share of the task's kept features that come from each layer (rows
    sum to 1); layers in network order."""
    layers: list[str] = []
    for s in selections.values():
        layers += [name for name in s["layers"] if name not in layers]
    counts = pd.DataFrame({t: {name: len(s["layers"].get(name, ())) for name in layers} for t, s in selections.items()}).T
    counts = counts.reindex(columns=layers).fillna(0)
    return counts.div(counts.sum(axis=1).where(lambda x: x > 0), axis=0)


def task_selections(runs: pd.DataFrame, selections_by_run: dict[str, Selection], backbone: str,
                    method: str = "head2toe") -> dict[str, Selection]:
    """One selection per task for a backbone: the lowest seed's final run, at the target size most
    tasks used (features of different target sizes are different features)."""
    final = final_runs(runs)
    final = final[(final["backbone"] == backbone) & (final["method"] == method) & final["run_id"].isin(selections_by_run)]
    if final.empty:
        return {}
    size = final["target_size"].mode().iloc[0]
    final = final[final["target_size"] == size].sort_values("seed")
    first = final.drop_duplicates("task")
    return {t: selections_by_run[r] for t in order_tasks(first["task"]) for r in first.loc[first["task"] == t, "run_id"]}
