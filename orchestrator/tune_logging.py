"""Tune callback that writes every trial's MLflow runs from the driver.

A run opens (RUNNING) when its trial starts, closes FINISHED with metrics when the trial
reports, and ends FAILED if the trial's process dies; Tune's retry opens a fresh run with
the same trial key, so readers count a trial once (its newest FINISHED run).
"""
from __future__ import annotations

from ray.tune import Callback

from orchestrator.tracking import Tracker
from orchestrator.trial import hp_params


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
            spec = self.trials[trial.config["trial"]]["spec"]
            self.open[trial.trial_id] = {
                spec.key_for(hp): self.tracker.open_trial(spec, spec.key_for(hp), hp_params(spec, hp), self.sweep_id,
                                                          self.stage_run, self.task_groups.get(spec.task, ""))
                for hp in spec.hps
            }
        return self.open[trial.trial_id]

    def _fail(self, trial) -> None:
        for run_id in self.open.pop(trial.trial_id, {}).values():
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
