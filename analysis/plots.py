"""Figures for the report and notebooks. Each function returns a Figure, or None when its
frame is empty.

Figures are built with matplotlib's object API, never pyplot: no global figure registry to
leak or close, no GUI backend to pick; `to_png` renders with Agg, so this runs headless and
leaves a notebook's own backend alone.
"""
from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.catalog import GROUP_ORDER, method_label, task_group, task_label

GROUP_COLOURS = dict(zip(GROUP_ORDER, ["tab:green", "tab:orange", "tab:blue", "tab:gray"]))


def to_png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes (Agg)."""
    FigureCanvasAgg(fig)  # render with Agg whatever backend the process has
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _grid(n: int, width: float = 3.2, height: float = 2.6, max_cols: int = 4) -> tuple[Figure, np.ndarray]:
    cols = min(n, max_cols)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat


def _log_ticks(ax, values) -> None:
    """Log x axis ticked at exactly the values that were run (no 6x10^-2 clutter)."""
    ticks = sorted(set(float(v) for v in values))
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(ticks, [f"{v:g}" for v in ticks])


def _group_legend(ax, groups) -> None:
    handles = [Line2D([], [], marker="o", ls="", color=GROUP_COLOURS[g], label=g) for g in GROUP_ORDER if g in set(groups)]
    ax.legend(handles=handles, fontsize=8, frameon=False)


def affinity_plot(affinity: pd.DataFrame) -> Figure | None:
    """Head2Toe's gain over Linear against domain affinity, one point per task (the paper's
    Figure: gains are largest for low-affinity, far-transfer tasks)."""
    data = affinity.dropna(subset=["affinity", "gain"])
    if data.empty:
        return None
    backbones = sorted(set(data["backbone"]))
    fig, axes = _grid(len(backbones), 4.8, 3.6, 2)
    for ax, bb in zip(axes, backbones):
        d = data[data["backbone"] == bb]
        groups = d["task"].map(task_group)
        ax.scatter(d["affinity"], d["gain"], c=[GROUP_COLOURS[g] for g in groups], s=30)
        for r in d.itertuples():
            ax.annotate(task_label(r.task), (r.affinity, r.gain), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.axhline(0, color="k", lw=0.6)
        ax.set(xlabel="domain affinity: Acc(Linear) − Acc(Scratch) [pp]", ylabel="Head2Toe − Linear [pp]", title=bb)
        _group_legend(ax, groups)
    return fig


def ours_vs_paper_plot(comparison: pd.DataFrame) -> Figure | None:
    """Our accuracy against the published one per (method, task); the diagonal is agreement."""
    if comparison.empty:
        return None
    backbones = sorted(set(comparison["backbone"]))
    fig, axes = _grid(len(backbones), 4.4, 4.0, 2)
    for ax, bb in zip(axes, backbones):
        d = comparison[comparison["backbone"] == bb]
        for m in d["method"].unique():
            dm = d[d["method"] == m]
            ax.scatter(dm["paper"], dm["ours"], s=18, label=method_label(m))
        ax.plot([0, 100], [0, 100], color="k", lw=0.6)
        ax.set(xlim=(0, 100), ylim=(0, 100), xlabel="paper [%]", ylabel="ours [%]", title=bb, aspect="equal")
        ax.legend(fontsize=7, frameon=False)
    return fig


def layers_vs_features_plot(frame: pd.DataFrame) -> Figure | None:
    """CV accuracy of selecting features (Head2Toe) vs whole layers at the same keep fraction."""
    if frame.empty:
        return None
    panels = list(frame.groupby(["backbone", "task"], sort=False))
    fig, axes = _grid(len(panels))
    for ax, ((bb, task), d) in zip(axes, panels):
        d = d.sort_values("keep_fraction")
        ax.plot(d["keep_fraction"], d["features_acc"], "o-", label="features (Head2Toe)")
        ax.plot(d["keep_fraction"], d["layers_acc"], "s--", label="whole layers")
        _log_ticks(ax, d["keep_fraction"])
        ax.set(title=f"{task_label(task)} · {bb}", xlabel="keep fraction (budget)", ylabel="CV accuracy [%]")
    axes[0].legend(fontsize=7, frameon=False)
    return fig


def heatmap(matrix: pd.DataFrame, title: str, label: str, vmax: float | None = 1.0, annotate: bool = True) -> Figure | None:
    """A labelled matrix (overlap between tasks, or layer shares)."""
    if matrix.empty:
        return None
    rows, cols = matrix.shape
    cell = 0.4 if max(rows, cols) <= 20 else 0.2  # inches; long axes (every layer of a network) get thin cells
    fig = Figure(figsize=(max(4.0, cell * cols + 2.5), max(3.0, cell * rows + 1.5)), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(matrix.to_numpy(float), cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
    ax.set_xticks(range(cols), [task_label(str(c)) for c in matrix.columns], rotation=90, fontsize=7)
    ax.set_yticks(range(rows), [task_label(str(r)) for r in matrix.index], fontsize=7)
    if annotate and rows * cols <= 400:
        for i in range(rows):
            for j in range(cols):
                v = matrix.iat[i, j]
                if pd.notna(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="w" if v < 0.6 * (vmax or 1) else "k")
    fig.colorbar(im, ax=ax, label=label)
    fig.suptitle(title, fontsize=10)  # a figure title is never clipped by a narrow matrix
    return fig


def target_size_plot(frame: pd.DataFrame) -> Figure | None:
    """Best CV accuracy against target size (features per layer), per task and method; None
    unless some curve has two or more target sizes."""
    if frame.empty or frame.groupby(["backbone", "task", "method"])["target_size"].nunique().max() < 2:
        return None
    panels = list(frame.groupby(["backbone", "task"], sort=False))
    fig, axes = _grid(len(panels))
    for ax, ((bb, task), d) in zip(axes, panels):
        for m, dm in d.groupby("method"):
            dm = dm.sort_values("target_size")
            ax.plot(dm["target_size"], dm["val_accuracy"], "o-", label=method_label(m))
        _log_ticks(ax, d["target_size"])
        ax.set(title=f"{task_label(task)} · {bb}", xlabel="target size T", ylabel="CV accuracy [%]")
    axes[0].legend(fontsize=7, frameon=False)
    return fig


def layers_used_plot(frame: pd.DataFrame) -> Figure | None:
    """Test accuracy against the number of layers the kept features come from."""
    if frame.empty:
        return None
    fig = Figure(figsize=(5.0, 3.6), layout="constrained")
    ax = fig.subplots()
    for (task, method), d in frame.groupby(["task", "method"]):
        ax.scatter(d["layers_used"], d["test_accuracy"], s=22, label=f"{task_label(task)} · {method_label(method)}",
                   marker="o" if method == "head2toe" else "s")
    ax.set(xlabel="layers used by the selection", ylabel="test accuracy [%]")
    ax.legend(fontsize=6, frameon=False, ncol=2)
    return fig


def cost_plot(cost: pd.DataFrame) -> Figure | None:
    """Head2Toe's FLOPs and size relative to fine-tuning, ours beside the paper's, per task."""
    if cost.empty:
        return None
    d = cost.reset_index(drop=True)
    x = np.arange(len(d))
    fig = Figure(figsize=(max(6.0, 0.5 * len(d) + 3), 3.4), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ["flops_vs_finetune", "size_vs_finetune"]):
        ax.bar(x - 0.2, d[metric], 0.4, label="ours")
        ax.bar(x + 0.2, d[f"paper_{metric}"], 0.4, label="paper (ResNet-50)")
        ax.set_xticks(x, [f"{task_label(t)}\n{b}" for t, b in zip(d["task"], d["backbone"])], rotation=90, fontsize=7)
        ax.set(yscale="log", title=metric.replace("_", " "))
    axes[0].legend(fontsize=7, frameon=False)
    return fig
