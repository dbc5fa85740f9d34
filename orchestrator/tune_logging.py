"""Tune callback that writes every trial's MLflow runs from the driver.

A run opens (RUNNING) when its trial starts, closes FINISHED with metrics when the trial
reports, and ends FAILED if the trial's process dies; Tune's retry opens a fresh run with
the same trial key, so readers count a trial once (its newest FINISHED run). A FAILED run
carries the error's one-line summary in the `h2t.error` tag, so the UI says why it failed
(a probe that diverged fails this way too: `ProbeDiverged` names its config).

Writes never stall the sweep: they queue in an outbox that one sender thread sends in
order, off Tune's event loop. While the tracking server is unreachable the outbox is held
and retried with backoff, so trials keep running; when the stage ends the driver waits for
the server up to the shared deadline (orchestrator.tracking.Outage), then journals what is
left.
"""
from __future__ import annotations

import re
import sys
import threading
import time
from collections import deque
from pathlib import Path

from ray.tune import Callback

from orchestrator.plan import TuneTrial
from orchestrator.record import TrialRecord
from orchestrator.tracking import Tracker, backoff_s, is_transient


ERROR_TAG = "h2t.error"
_EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Exit|OutOfMemory|Diverged)\w*: ")


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
    def __init__(self, tracker: Tracker, sweep_id: str, stage_run: str, task_groups: dict[str, str], trials: list[TuneTrial]):
        self.trials = trials
        self.tracker = tracker
        self.sweep_id = sweep_id
        self.stage_run = stage_run
        self.task_groups = task_groups
        self.open: dict[str, dict[str, str]] = {}  # tune trial id -> {trial key: run handle}
        self.ids: dict[str, str] = {}  # run handle -> MLflow run id, once created (written by the sender only)
        self.outbox: deque[dict] = deque()  # writes not yet sent, in order
        self.attempt = 0
        self.logged = 0
        self.failed = 0
        self._start_sender_state()

    def _start_sender_state(self) -> None:
        self._wake = threading.Condition()
        self._closing = False
        self._sender: threading.Thread | None = None
        self._error: BaseException | None = None

    def __getstate__(self) -> dict:
        """Tune pickles its callbacks with the Tuner: the sender's lock and thread stay behind."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_wake", "_closing", "_sender", "_error")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._start_sender_state()

    # -- the outbox --------------------------------------------------------------------------
    # Tune calls the trial events on its event loop: a write there would hold back the next
    # trial's start (each MLflow call is tens of ms on SQLite), so events only queue writes
    # and one sender thread sends them, in order.
    def _send(self, ops: list[dict]) -> None:
        if self._error is not None:
            raise self._error
        with self._wake:
            self.outbox.extend(ops)
            self._wake.notify()
        if self._sender is None:
            self._sender = threading.Thread(target=self._run_sender, name="h2t-mlflow-outbox", daemon=True)
            self._sender.start()

    def _run_sender(self) -> None:
        """Send queued writes in order. An outage holds the queue and retries with backoff;
        once the stage has ended, retries go on up to the outage's deadline only."""
        outage = self.tracker.outage
        try:
            while True:
                with self._wake:
                    while not self.outbox and not self._closing:
                        self._wake.wait()
                    if not self.outbox:
                        return
                delay = self._send_first()
                if delay:
                    if self._closing and outage.remaining() <= 0:
                        return
                    time.sleep(min(delay, outage.remaining()) if self._closing else delay)
        except BaseException as e:  # a non-transient error: the next event (or the stage's end) raises it
            self._error = e

    def _send_first(self) -> float:
        """One attempt at the oldest write: 0 when sent, else the backoff before the next try."""
        outage = self.tracker.outage
        try:
            self.tracker.apply(self.outbox[0], self.ids, wait=False)
        except Exception as e:
            if not is_transient(e):
                raise
            if outage.since is None:
                print(f"h2t: tracking server {self.tracker.uri} unreachable ({str(e).splitlines()[0][:200]}); "
                      f"holding results and retrying for up to {outage.wait_s:.0f} s", file=sys.stderr)
            outage.failed(e)
            delay = backoff_s(self.attempt)
            self.attempt += 1
            return delay
        self.outbox.popleft()
        if outage.since is not None:
            print(f"h2t: tracking server back after {time.monotonic() - outage.since:.0f} s; sending held results", file=sys.stderr)
        outage.ok()
        self.attempt = 0
        return 0.0

    def on_experiment_end(self, trials, **info):
        """The stage is over: wait for the server (to the shared deadline), journal what is left."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        if self._sender is not None:
            self._sender.join()
        if self._error is not None:
            raise self._error
        if self.outbox:
            self.tracker.hold(list(self.outbox), self.ids)  # the driver's next call raises TrackingUnavailable, naming it
            self.outbox.clear()

    # -- trial events --------------------------------------------------------------------------
    def _open(self, trial) -> dict[str, str]:
        if trial.trial_id not in self.open:
            handles = {}
            for spec in self.trials[trial.config["trial"]].specs:  # a final trial of a task x backbone holds several
                for key, params in spec.runs():
                    ops = self.tracker.open_trial_ops(spec, key, params, self.sweep_id, self.stage_run, self.task_groups.get(spec.task, ""))
                    handles[key] = ops[0]["h"]
                    self._send(ops)
            self.open[trial.trial_id] = handles
        return self.open[trial.trial_id]

    def _fail(self, trial) -> None:
        runs = self.open.pop(trial.trial_id, {})
        reason = error_summary(trial) if runs else ""
        for h in runs.values():
            self._send(self.tracker.fail_trial_ops(h, reason))
            self.failed += 1

    def on_trial_start(self, iteration, trials, trial, **info):
        self._open(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        runs = self._open(trial)
        for row in result.get("rows", []):
            h = runs.pop(TrialRecord.from_row(row).key, None)
            if h is not None:
                self._send(self.tracker.close_trial_ops(h, row))
                self.logged += 1

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._fail(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._fail(trial)

    def on_trial_complete(self, iteration, trials, trial, **info):
        leftover = self.open.pop(trial.trial_id, {})
        for h in leftover.values():  # a trial that ended without reporting its rows
            self._send(self.tracker.fail_trial_ops(h, ""))
            self.failed += 1
