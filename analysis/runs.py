"""MLflow trial runs of a sweep -> one tidy pandas frame (docs/mlflow_schema.md).

A trial whose process died ends FAILED and is retried as a new run with the same
`h2t.trial_key`; every reader here counts a trial once: its newest FINISHED run.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from analysis.catalog import task_group

DEFAULT_EXPERIMENT = "h2t-demo"
KEPT_ARTIFACT = "selection/kept_indices.json"
NUMERIC_PARAMS = ("lr", "steps", "coef", "target_size", "keep_fraction")
KF_PREFIX = ("val_accuracy/kf_", "n_features_kept/kf_")


class NoRunsError(LookupError):
    """The tracking store or experiment holds nothing to analyse (a user error, not a bug)."""


def _client(tracking_uri: str) -> MlflowClient:
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri[len("sqlite:///"):])
        if not path.exists():  # MLflow would silently create an empty store here
            raise NoRunsError(f"no MLflow store at {path}; run `h2t sweep` first or pass --tracking-uri")
    return MlflowClient(tracking_uri)


def _experiment_id(client: MlflowClient, experiment: str) -> str:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise NoRunsError(f"no experiment {experiment!r} in the store; it has: {', '.join(names) or 'none'}")
    return exp.experiment_id


def _search(client: MlflowClient, experiment_id: str, filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=5000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _row(run) -> dict:
    p, m, t = run.data.params, run.data.metrics, run.data.tags
    row = {
        "run_id": run.info.run_id, "status": run.info.status, "start_time": run.info.start_time,
        "trial_key": t.get("h2t.trial_key"), "sweep_id": t.get("h2t.sweep_id"), "cache_key": t.get("h2t.cache_key"),
        "stage": t.get("h2t.stage", p.get("stage")), "task": p.get("task"), "task_group": p.get("task_group"),
        "backbone": p.get("backbone"), "method": p.get("method"), "seed": p.get("seed"), "fold": p.get("fold"),
        "keep_fractions": p.get("keep_fractions", ""),
    }
    for name in NUMERIC_PARAMS:
        row[name] = p.get(name)
    row.update(m)
    return row


def load_runs(tracking_uri: str, experiment: str = DEFAULT_EXPERIMENT, every_run: bool = False) -> pd.DataFrame:
    """Every trial of `experiment` as one row, deduplicated per trial key.

    Columns: run_id, trial_key, stage (cv/final), task, group (VTAB group or Offline),
    task_group (as logged), backbone, method, seed (int), fold ("0".."4" or "test"), lr, steps,
    coef, target_size, keep_fraction (floats; NaN when not logged), and every logged metric
    (test_accuracy, val_accuracy, val_accuracy/kf_<f>, ... in [0, 1] as logged).
    `every_run=True` keeps failed runs and superseded retries (for counting, debugging).
    """
    client = _client(tracking_uri)
    runs = _search(client, _experiment_id(client, experiment), "tags.`h2t.kind` = 'trial'")
    frame = pd.DataFrame([_row(r) for r in runs])
    if frame.empty:
        raise NoRunsError(f"experiment {experiment!r} has no trial runs (tag h2t.kind=trial) yet")
    return tidy(frame, every_run=every_run)


def tidy(frame: pd.DataFrame, every_run: bool = False) -> pd.DataFrame:
    """Types, analysis group, and one run per trial key (the newest FINISHED one)."""
    frame = frame.copy()
    for name in NUMERIC_PARAMS:
        frame[name] = pd.to_numeric(frame[name].replace("", np.nan), errors="coerce")
    frame["seed"] = pd.to_numeric(frame["seed"], errors="coerce").astype("Int64")
    frame["fold"] = frame["fold"].astype(str)
    frame["group"] = frame["task"].map(task_group)
    frame["trial_key"] = frame["trial_key"].fillna(frame["run_id"])
    if not every_run:
        frame = frame[frame["status"] == "FINISHED"]
        frame = frame.sort_values("start_time").drop_duplicates("trial_key", keep="last")
    return frame.sort_values(["stage", "backbone", "task", "method", "seed", "fold"]).reset_index(drop=True)


def final_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Final trials (trained on all 1000 images, scored on test)."""
    return runs[(runs["stage"] == "final") & runs["test_accuracy"].notna()] if "test_accuracy" in runs else runs.iloc[:0]


def keep_fraction_long(runs: pd.DataFrame) -> pd.DataFrame:
    """CV trials of selection methods, one row per keep fraction: val_accuracy and
    n_features_kept at that budget (from the `.../kf_<f>` metrics)."""
    cv = runs[runs["stage"] == "cv"]
    acc_cols = [c for c in cv.columns if c.startswith(KF_PREFIX[0])]
    if cv.empty or not acc_cols:
        return pd.DataFrame(columns=["run_id", "task", "backbone", "method", "seed", "fold", "lr", "steps", "coef",
                                     "target_size", "keep_fraction", "val_accuracy", "n_features_kept", "n_features_total"])
    base = ["run_id", "task", "group", "backbone", "method", "seed", "fold", "lr", "steps", "coef", "target_size", "n_features_total"]
    parts = []
    for col in acc_cols:
        kf = col[len(KF_PREFIX[0]):]
        kept_col = KF_PREFIX[1] + kf
        part = cv[base].assign(keep_fraction=float(kf), val_accuracy=cv[col],
                               n_features_kept=cv[kept_col] if kept_col in cv else np.nan)
        parts.append(part[part["val_accuracy"].notna()])
    return pd.concat(parts, ignore_index=True)


@contextmanager
def _no_progress_bars():
    """MLflow draws a tqdm bar per artefact download; hundreds of them bury the output."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    old = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def load_selection(client: MlflowClient, run_id: str) -> dict | None:
    """A final trial's kept features: {"layers": {layer: np.ndarray}, "widths": {layer: int}} in
    network order, or None when the run has no selection artefact."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, KEPT_ARTIFACT, tmp)
        except (MlflowException, OSError):
            return None
        data = json.loads(Path(path).read_text())
    widths = {k: int(v) for k, v in data.get("widths", {}).items()}
    layers = {k: np.asarray(v, dtype=np.int64) for k, v in data["layers"].items()}
    order = list(widths) + [k for k in layers if k not in widths]
    return {"layers": {k: layers.get(k, np.zeros(0, np.int64)) for k in order}, "widths": widths}


def load_selections(tracking_uri: str, runs: pd.DataFrame, methods=("head2toe", "head2toe_layers")) -> dict[str, dict]:
    """Selections of the final trials of `methods`, by run id (runs without the artefact left out)."""
    client = _client(tracking_uri)
    final = final_runs(runs)
    out = {}
    with _no_progress_bars():
        for run_id in final.loc[final["method"].isin(methods), "run_id"]:
            sel = load_selection(client, run_id)
            if sel is not None:
                out[run_id] = sel
    return out
