"""Tune callback that writes every trial's MLflow runs from the driver.

A run opens (RUNNING) when its trial starts, closes FINISHED with metrics when the trial
reports, and ends FAILED if the trial's process dies; Tune's retry opens a fresh run with
the same trial key, so readers count a trial once (its newest FINISHED run). A FAILED run
carries the error's one-line summary in the `h2t.error` tag, so the UI says why it failed.
"""
from __future__ import annotations

import re
from pathlib import Path

from ray.tune import Callback

from orchestrator.tracking import Tracker


ERROR_TAG = "h2t.error"
_EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Exit|OutOfMemory)\w*: ")


def error_summary(trial) -> str:
    """One line for the trial's latest failure, from Tune's plain-text error file (never its pickle):
    the last `SomeError: message` line of the traceback, else the failure's first line."""
    try:
        text = Path(trial.error_file).read_text(errors="replace") if trial.error_file else ""
    except OSError:
        return ""
    lines = [ln.strip() for ln in text.rsplit("Failure # ", 1)[-1].splitlines()[1:] if ln.strip()]
    found = [ln for ln in lines if _EXCEPTION_LINE.match(ln)]
    return (found[-1] if found else lines[0] if lines else "")[:1000]


class MlflowTrialLogger(Callback):
    def __init__(self, tracker: Tracker, sweep_id: str, stage_run: str, task_groups: dict[str, str], trials: list[dict]):
        self.trials = trials
        self.tracker = tracker
        self.sweep_id = sweep_id
        self.stage_run = stage_run
        self.task_groups = task_groups
        self.open: dict[str, dict[str, str]] = {}  # tune trial id -> {trial key: mlflow run id}
        self.logged = 0
        self.failed = 0

    def _open(self, trial) -> dict[str, str]:
        if trial.trial_id not in self.open:
            t = self.trials[trial.config["trial"]]
            self.open[trial.trial_id] = {  # a final trial of a task x backbone holds several specs
                key: self.tracker.open_trial(spec, key, params, self.sweep_id, self.stage_run, self.task_groups.get(spec.task, ""))
                for spec in t.get("specs") or [t["spec"]] for key, params in spec.runs()
            }
        return self.open[trial.trial_id]

    def _fail(self, trial) -> None:
        runs = self.open.pop(trial.trial_id, {})
        reason = error_summary(trial) if runs else ""
        for run_id in runs.values():
            if reason:
                self.tracker.client.set_tag(run_id, ERROR_TAG, reason)
            self.tracker.end(run_id, "FAILED")
            self.failed += 1

    def on_trial_start(self, iteration, trials, trial, **info):
        self._open(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        runs = self._open(trial)
        for row in result.get("rows", []):
            run_id = runs.pop(row["key"], None)
            if run_id is not None:
                self.tracker.close_trial(run_id, row)
                self.logged += 1

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._fail(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._fail(trial)

    def on_trial_complete(self, iteration, trials, trial, **info):
        leftover = self.open.pop(trial.trial_id, {})
        for run_id in leftover.values():  # a trial that ended without reporting its rows
            self.tracker.end(run_id, "FAILED")
            self.failed += 1
