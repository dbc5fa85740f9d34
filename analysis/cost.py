r"""What Head2Toe costs relative to fine-tuning and to Linear (the paper's cost table).

With F candidate features (`n_features_total`), keep fraction f (so k = floor(f F) kept,
`n_features_kept`), C classes, a pre-logits width D, backbone parameters P and forward
cost FWD (multiply-adds per image), n = 1000 training images, and fine-tuning for S = 500
steps at batch B = 128 (forward + backward = 3 forwards):

    size_H2T  = k C + F / 32        kept head weights + a 1-bit mask over the F candidates (32-bit words)
    size_Lin  = D C
    size_FT   = P + D C
    FLOPs_H2T = n FWD + 1.18 * 2 S B F C
                (one forward per image; training W_all on all F features; validating the
                keep fractions adds ~18%, the paper's estimate)
    FLOPs_FT  = 3 S B FWD

These are reconstructed from the published table: with the paper's ResNet-50 constants they
reproduce every internally consistent row of the slides to the printed precision (P = 23.481 M,
FWD = 4.1 G). Rows whose slide values do not fit (their cells look shifted in the slide text)
are flagged `slide_consistent = False` by `paper_cost_check`.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.catalog import num_classes
from analysis.published import published_cost
from analysis.runs import final_runs

N_IMAGES, FT_STEPS, FT_BATCH, VALIDATION_OVERHEAD, MASK_BITS = 1000, 500, 128, 1.18, 32

# name -> (P: backbone parameters without the head, D: pre-logits width, FWD: multiply-adds per
# 224 px image). ResNet-50's P is the one the paper's table implies; the others are timm's.
BACKBONE_COSTS: dict[str, tuple[float, int, float]] = {
    "resnet50": (23.481e6, 2048, 4.1e9),
    "vit_b16": (85.8e6, 768, 16.9e9),
    "vit_base_patch16_224": (85.8e6, 768, 16.9e9),
    "efficientnet_lite0": (3.37e6, 1280, 0.39e9),
}


def head2toe_cost(n_features_total: float, n_kept: float, classes: int, backbone: str = "resnet50") -> dict[str, float]:
    """Head2Toe's FLOPs and storage relative to fine-tuning and Linear (module docstring)."""
    params, width, fwd = BACKBONE_COSTS[backbone]
    size_h2t = n_kept * classes + n_features_total / MASK_BITS
    flops_h2t = N_IMAGES * fwd + VALIDATION_OVERHEAD * 2 * FT_STEPS * FT_BATCH * n_features_total * classes
    return {
        "flops_vs_finetune": flops_h2t / (3 * FT_STEPS * FT_BATCH * fwd),
        "size_vs_finetune": size_h2t / (params + width * classes),
        "size_vs_linear": size_h2t / (width * classes),
    }


def paper_cost_check(tolerance: float = 0.01) -> pd.DataFrame:
    """The published cost table beside the formula's values from its own F, N, C (ResNet-50),
    with `slide_consistent` = every printed ratio within `tolerance` (relative) of the formula."""
    paper = published_cost()
    rows = paper[paper["task"] != "average"].copy()
    metrics = ["flops_vs_finetune", "size_vs_finetune", "size_vs_linear"]
    model = [head2toe_cost(r.n_features_total, math.floor(r.keep_fraction * r.n_features_total), int(r.num_classes))
             for r in rows.itertuples()]
    for m in metrics:
        rows[f"{m}_formula"] = [x[m] for x in model]
    close = np.all([np.isclose(rows[m], rows[f"{m}_formula"], rtol=tolerance, atol=5e-6) for m in metrics], axis=0)
    rows["slide_consistent"] = close
    return rows.reset_index(drop=True)


def cost_table(runs: pd.DataFrame, method: str = "head2toe") -> pd.DataFrame:
    """Per backbone and task, from our final Head2Toe runs (mean over seeds): F, kept, f, C and
    the three ratios; beside them the paper's ratios for the task (ResNet-50). Backbones
    without known constants are left out."""
    final = final_runs(runs)
    final = final[(final["method"] == method) & final["backbone"].isin(BACKBONE_COSTS)]
    cols = ["backbone", "task", "n_features_total", "n_features_kept", "keep_fraction", "num_classes",
            "flops_vs_finetune", "size_vs_finetune", "size_vs_linear",
            "paper_flops_vs_finetune", "paper_size_vs_finetune", "paper_size_vs_linear"]
    if final.empty:
        return pd.DataFrame(columns=cols)
    grouped = final.groupby(["backbone", "task"]).agg(n_features_total=("n_features_total", "mean"),
                                                       n_features_kept=("n_features_kept", "mean"),
                                                       keep_fraction=("keep_fraction", "mean")).reset_index()
    paper = published_cost().set_index("task")
    rows = []
    for r in grouped.itertuples():
        classes = num_classes(r.task)
        if classes is None:
            continue
        ratios = head2toe_cost(r.n_features_total, r.n_features_kept, classes, r.backbone)
        published = {f"paper_{k}": (paper.loc[r.task, k] if r.task in paper.index else np.nan) for k in ratios}
        rows.append({"backbone": r.backbone, "task": r.task, "n_features_total": r.n_features_total,
                     "n_features_kept": r.n_features_kept, "keep_fraction": r.keep_fraction, "num_classes": classes,
                     **ratios, **published})
    return pd.DataFrame(rows, columns=cols)
