"""Head2Toe on single backbones against their union (docs/multi_backbone.md): per task and
backbone, test accuracy, candidate and kept features, and for a composite the share of its
kept features each member contributed (from the selection artefact's qualified layer names)."""
from __future__ import annotations

import pandas as pd

from analysis.catalog import order_tasks
from analysis.overlap import task_selections
from analysis.runs import final_runs
from head2toe.backbones import COMPOSITE_SEP, split_qualified


def member_share(selection: dict) -> dict[str, float]:
    """{member: share of the kept features} of a composite's selection (shares sum to 1)."""
    kept: dict[str, int] = {}
    for layer, idx in selection["layers"].items():
        member = split_qualified(layer)[0]
        kept[member] = kept.get(member, 0) + len(idx)
    total = sum(kept.values())
    return {m: n / total for m, n in kept.items()} if total else {}


def backbone_table(runs: pd.DataFrame, selections: dict[str, dict], method: str = "head2toe") -> pd.DataFrame:
    """One row per task x backbone of `method`'s final runs (mean over seeds of accuracy and
    counts); `kept_share` names each member's share for a composite backbone."""
    final = final_runs(runs)
    final = final[final["method"] == method]
    if final.empty or not final["backbone"].str.contains(COMPOSITE_SEP, regex=False).any():
        return pd.DataFrame()
    rows = []
    for bb in sorted(set(final["backbone"]), key=lambda b: (COMPOSITE_SEP in b, b)):
        chosen = task_selections(runs, selections, bb, method) if COMPOSITE_SEP in bb else {}
        for task, group in final[final["backbone"] == bb].groupby("task"):
            share = member_share(chosen[task]) if task in chosen else {}
            rows.append({"task": task, "backbone": bb, "test_accuracy": 100 * group["test_accuracy"].mean(),
                         "candidates": int(group["n_features_total"].mean()), "kept": int(group["n_features_kept"].mean()),
                         "kept_share": ", ".join(f"{m} {100 * s:.1f}%" for m, s in share.items())})
    table = pd.DataFrame(rows)
    table["task"] = pd.Categorical(table["task"], order_tasks(table["task"].unique()), ordered=True)
    return table.sort_values(["task", "backbone"]).reset_index(drop=True)
