"""MLflow record of a sweep (see docs/mlflow_schema.md), written by one process.

Trials run anywhere in the cluster, but only the driver writes to MLflow: many processes
writing one SQLite file is a known source of "database is locked", and a single writer
also keeps working unchanged against a remote tracking server.
"""
from __future__ import annotations

import json
import subprocess
import time
from functools import lru_cache
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from orchestrator.plan import FINAL_FOLD, TrialSpec

KIND, STAGE, SWEEP, KEY, CACHE, COMMIT = "h2t.kind", "h2t.stage", "h2t.sweep_id", "h2t.trial_key", "h2t.cache_key", "h2t.git_commit"
PARENT = "mlflow.parentRunId"


@lru_cache(maxsize=1)
def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def kf_suffix(fraction: float) -> str:
    return f"kf_{float(fraction)!r}"


class Tracker:
    """Sweep-, stage- and trial-level runs in one experiment."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_location: str | None = None):
        """`artifact_location` applies when the experiment is created: a local store keeps its
        artefacts beside the database, so copying the output folder keeps the selections."""
        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(experiment, artifact_location)
        self.experiment = experiment

    # -- queries ---------------------------------------------------------------------------
    def search(self, filter_string: str) -> list:
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string, max_results=5000, page_token=token)
            runs += list(page)
            token = page.token
            if not token:
                return runs

    def instances(self, config_hash: str) -> list[str]:
        """Sweep ids of earlier runs of the same config, oldest first."""
        runs = self.search(f"tags.`{KIND}` = 'sweep' and tags.`h2t.config_hash` = '{config_hash}'")
        return [r.data.tags[SWEEP] for r in sorted(runs, key=lambda r: r.info.start_time)]

    def trial_runs(self, sweep_id: str, stage: str | None = None, status: str | None = None) -> list:
        f = f"tags.`{KIND}` = 'trial' and tags.`{SWEEP}` = '{sweep_id}'"
        if stage:
            f += f" and tags.`{STAGE}` = '{stage}'"
        if status:
            f += f" and attributes.status = '{status}'"
        return self.search(f)

    def finished_keys(self, sweep_id: str) -> set[str]:
        return {r.data.tags[KEY] for r in self.trial_runs(sweep_id, status="FINISHED")}

    def fail_orphans(self, sweep_id: str) -> int:
        """Runs left RUNNING by a killed driver end FAILED (their trials run again)."""
        orphans = self.trial_runs(sweep_id, status="RUNNING")
        for r in orphans:
            self.client.set_terminated(r.info.run_id, "FAILED")
        return len(orphans)

    # -- parents ---------------------------------------------------------------------------
    def sweep_run(self, sweep_id: str, config_hash: str, config_name: str, config_text: str) -> str:
        found = self.search(f"tags.`{KIND}` = 'sweep' and tags.`{SWEEP}` = '{sweep_id}'")
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=f"sweep-{config_name}-{sweep_id}", tags={
            KIND: "sweep", SWEEP: sweep_id, "h2t.config_hash": config_hash, "h2t.config_name": config_name, COMMIT: git_commit()})
        self.client.log_text(run.info.run_id, config_text, "config.yaml")
        return run.info.run_id

    def stage_run(self, sweep_id: str, parent: str, stage: str) -> str:
        found = self.search(f"tags.`{KIND}` = 'stage' and tags.`{SWEEP}` = '{sweep_id}' and tags.`{STAGE}` = '{stage}'")
        if found:
            self.client.update_run(found[0].info.run_id, status="RUNNING")
            return found[0].info.run_id
        run = self.client.create_run(self.experiment_id, run_name=stage, tags={KIND: "stage", STAGE: stage, SWEEP: sweep_id, PARENT: parent})
        return run.info.run_id

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)

    # -- trials ----------------------------------------------------------------------------
    def open_trial(self, spec: TrialSpec, key: str, hp_params: dict, sweep_id: str, parent: str, task_group: str) -> str:
        params = {
            "task": spec.task, "task_group": task_group, "backbone": spec.backbone.name, "method": spec.method,
            "seed": spec.seed, "fold": FINAL_FOLD if spec.fold is None else spec.fold, "stage": spec.stage, **hp_params,
        }
        run = self.client.create_run(self.experiment_id, run_name=f"{spec.name()}_{key[:6]}", tags={
            KIND: "trial", STAGE: spec.stage, SWEEP: sweep_id, KEY: key, PARENT: parent, COMMIT: git_commit()})
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return run.info.run_id

    def close_trial(self, run_id: str, row: dict) -> None:
        """Metrics, cache key, artefacts, then FINISHED."""
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in row["metrics"].items() if v is not None]
        tags = [RunTag(CACHE, row.get("cache_key", ""))]
        self.client.log_batch(run_id, metrics=metrics, tags=tags)
        if row.get("kept") is not None:
            self.client.log_dict(run_id, {"layers": row["kept"], "widths": row.get("widths", {})}, "selection/kept_indices.json")
        self.client.log_text(run_id, json.dumps({k: v for k, v in row.items() if k != "kept"}, default=str, indent=1), "result.json")
        self.client.set_terminated(run_id, "FINISHED")
