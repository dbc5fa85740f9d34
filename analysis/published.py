"""The paper's published numbers (typed from the ICML'22 slides into `published/*.csv`) and
the side-by-side view of ours against them."""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

import pandas as pd

from analysis.catalog import PUBLISHED_BACKBONES, VTAB_TASKS
from analysis.tables import MEAN, PaperTable


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
