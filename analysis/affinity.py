"""Domain affinity (the paper's task-similarity metric) and Head2Toe's gain against it.

    affinity(task) = Acc(Linear) - Acc(Scratch)

A task close to the upstream data has a good linear probe relative to training from scratch;
the paper finds Head2Toe helps most where affinity is low (far transfer).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.catalog import PUBLISHED_BACKBONES, VTAB_TASKS
from analysis.published import published_table
from analysis.tables import PaperTable


def domain_affinity(table: PaperTable) -> pd.DataFrame:
    """Per task: linear, scratch, affinity, head2toe, gain (Head2Toe - Linear), all in %.

    Scratch is ours when the table has scratch runs for the task, else the paper's Scratch row
    for this backbone (ResNet-50's for backbones the paper does not report); `scratch_source`
    says which ("ours", "paper (resnet50)", or "none" for tasks the paper lacks).
    """
    mean = table.mean
    paper_key = PUBLISHED_BACKBONES.get(table.backbone, "resnet50")
    paper = published_table(paper_key)
    rows = []
    for t in table.tasks:
        linear = mean.loc["linear", t] if "linear" in mean.index else float("nan")
        if pd.isna(linear):
            continue
        scratch, source = float("nan"), "none"
        if "scratch" in mean.index and pd.notna(mean.loc["scratch", t]):
            scratch, source = float(mean.loc["scratch", t]), "ours"
        elif t in VTAB_TASKS:
            scratch, source = float(paper.loc["scratch", t]), f"paper ({paper_key})"
        h2t = mean.loc["head2toe", t] if "head2toe" in mean.index else float("nan")
        rows.append({"backbone": table.backbone, "task": t, "linear": float(linear), "scratch": scratch,
                     "scratch_source": source, "affinity": linear - scratch, "head2toe": float(h2t), "gain": h2t - linear})
    cols = ["backbone", "task", "linear", "scratch", "scratch_source", "affinity", "head2toe", "gain"]
    return pd.DataFrame(rows, columns=cols)


def affinity_note(frame: pd.DataFrame) -> str:
    """One line saying where the Scratch numbers came from."""
    sources = sorted(set(frame["scratch_source"]))
    if not sources:
        return "No Linear runs: no domain affinity."
    if sources == ["ours"]:
        return "Scratch accuracy from our scratch runs."
    borrowed = [s for s in sources if s.startswith("paper")]
    text = f"No scratch runs for some tasks: their Scratch accuracy comes from the {', '.join(borrowed)} Scratch row." if borrowed else ""
    if "none" in sources:
        text += " Tasks outside VTAB without scratch runs have no affinity."
    return text.strip()


def gain_vs_affinity(frame: pd.DataFrame) -> str:
    """One line: the correlation of Head2Toe's gain with domain affinity over the tasks that
    have both (the paper finds it negative: the gain is largest where affinity is low)."""
    both = frame.dropna(subset=["affinity", "gain"])
    if len(both) < 3:
        return ""
    r = float(np.corrcoef(both["affinity"], both["gain"])[0, 1])
    low = both.sort_values("affinity").iloc[0]
    return (f"Over {len(both)} tasks, corr(affinity, gain) = {r:+.2f} (Pearson); the lowest affinity is {low['task']} "
            f"({low['affinity']:+.1f}), where Head2Toe gains {low['gain']:+.1f} points. The paper finds the gain largest "
            "where affinity is low (a negative correlation).")
