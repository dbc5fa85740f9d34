"""The paper's published numbers (typed from the ICML'22 slides into `published/*.csv`) and
the side-by-side view of ours against them."""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

import pandas as pd

from analysis.catalog import PUBLISHED_BACKBONES, VTAB_TASKS, method_label, order_methods
from analysis.tables import MEAN, PaperTable

# Offline tasks built to imitate a VTAB-1k task (head2toe/tasks/offline.py): the same label on
# procedurally drawn images, not the task's images, so never compared with the paper's cell.
STAND_INS = {"synth_dsprites_loc": "dsprites_loc", "synth_dsprites_ori": "dsprites_ori", "synth_clevr_count": "clevr_count"}
PUBLISHED_FILES = {"resnet50": "ResNet-50", "vit_b16": "ViT-B/16"}  # published/<key>.csv


@lru_cache(maxsize=None)
def _csv(name: str) -> pd.DataFrame:
    with resources.files("analysis").joinpath("published", name).open() as f:
        return pd.read_csv(f)


def published_table(backbone: str) -> pd.DataFrame | None:
    """Paper table (methods x the 19 VTAB tasks + mean, in %) for a backbone, or None when the
    paper has no table for it. Index: method registry names (scratch, finetune, ... included)."""
    key = PUBLISHED_BACKBONES.get(backbone)
    if key is None:
        return None
    table = _csv(f"{key}.csv").set_index("method")
    return table.rename(columns={"mean": MEAN}).copy()


def published_cost() -> pd.DataFrame:
    """The paper's cost table (ResNet-50): per task the chosen keep fraction F, candidate
    features N, classes C, and Head2Toe's FLOPs and size relative to fine-tuning and Linear.
    The last row (task 'average') is the paper's average."""
    return _csv("cost.csv").copy()


def compare(table: PaperTable) -> pd.DataFrame:
    """Ours vs the paper per (method, task) for a backbone the paper reports: columns method,
    task, ours, ours_std, n_seeds, paper, diff (ours - paper, percentage points). Rows only
    where both exist; empty for backbones or tasks the paper does not report."""
    paper = published_table(table.backbone)
    cols = ["backbone", "method", "task", "ours", "ours_std", "n_seeds", "paper", "diff"]
    if paper is None:
        return pd.DataFrame(columns=cols)
    rows = []
    for m in table.mean.index:
        for t in table.tasks:
            ours = table.mean.loc[m, t]
            if m in paper.index and t in VTAB_TASKS and pd.notna(ours):
                p = float(paper.loc[m, t])
                rows.append([table.backbone, m, t, ours, table.std.loc[m, t], int(table.n.loc[m, t]), p, ours - p])
    return pd.DataFrame(rows, columns=cols)


def side_by_side(comparison: pd.DataFrame, backbone: str) -> pd.DataFrame:
    """`compare`'s rows as a methods x tasks grid of 'ours vs paper (diff)' strings."""
    from analysis.catalog import method_label, order_methods, order_tasks, task_label

    d = comparison[comparison["backbone"] == backbone]
    if d.empty:
        return pd.DataFrame()
    cells = d.assign(cell=[f"{o:.1f} vs {p:.1f} ({x:+.1f})" for o, p, x in zip(d["ours"], d["paper"], d["diff"])])
    grid = cells.pivot(index="method", columns="task", values="cell")
    grid = grid.reindex(index=order_methods(grid.index), columns=order_tasks(grid.columns)).fillna("–")
    grid.index = [method_label(m) for m in grid.index]
    grid.columns = [task_label(t) for t in grid.columns]
    return grid


def why_no_comparison(tables: dict[str, PaperTable]) -> str:
    """One plain sentence on why `compare` found no rows: which backbones the paper lacks and
    which tasks are not VTAB-1k tasks (offline stand-ins named with the task they imitate)."""
    backbones = sorted(b for b in tables if b not in PUBLISHED_BACKBONES)
    tasks = sorted({t for tb in tables.values() for t in tb.tasks if t not in VTAB_TASKS})
    shown = ", ".join(f"{t} (imitates {STAND_INS[t]})" if t in STAND_INS else t for t in tasks)
    reasons = []
    if backbones:
        reasons.append(f"the paper has no table for {', '.join(backbones)}")
    if tasks:
        reasons.append(f"the tasks {shown} are offline stand-ins, not VTAB-1k tasks: other images, so the paper's "
                       "cells do not apply to them")
    if not tables:
        reasons.append("the sweep has no final trials yet")
    return ("No comparison rows: " + "; ".join(reasons) + ". With ResNet-50 or ViT-B/16 on the VTAB-1k tasks "
            "(configs/paper_resnet50.yaml, configs/paper_vit_b16.yaml) this section compares each method's mean over "
            "seeds with the published cell per task.") if reasons else ""


def paper_rows(tables: dict[str, PaperTable]) -> pd.DataFrame:
    """The published rows (analysis/published/<backbone>.csv) a comparison of this sweep's
    methods would use: per method, the paper's VTAB-1k mean on each published backbone (NaN
    where the paper has no such row, e.g. the head2toe_layers ablation)."""
    methods = order_methods({m for t in tables.values() for m in t.mean.index})
    cols = {key: _csv(f"{key}.csv").set_index("method")["mean"] for key in PUBLISHED_FILES}
    rows = [{"method": method_label(m), **{f"paper {label} VTAB-1k mean": float(cols[key].get(m, float("nan")))
                                          for key, label in PUBLISHED_FILES.items()}} for m in methods]
    return pd.DataFrame(rows, columns=["method", *(f"paper {label} VTAB-1k mean" for label in PUBLISHED_FILES.values())])


def stand_in_rows(tables: dict[str, PaperTable]) -> pd.DataFrame:
    """For orientation only, never a comparison: per backbone, offline stand-in task and method
    the paper also has, our mean next to the paper's ResNet-50 cell of the VTAB-1k task the
    stand-in imitates (other images and another backbone: the gap means nothing by itself)."""
    paper = _csv("resnet50.csv").set_index("method")
    cols = ["backbone", "task", "imitates", "method", "ours", "paper resnet50 (on the VTAB task)"]
    rows = [[b, t, STAND_INS[t], method_label(m), float(tb.mean.loc[m, t]), float(paper.loc[m, STAND_INS[t]])]
            for b, tb in tables.items() for t in tb.tasks if t in STAND_INS
            for m in tb.mean.index if m in paper.index and pd.notna(tb.mean.loc[m, t])]
    return pd.DataFrame(rows, columns=cols)
