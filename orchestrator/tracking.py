"""MLflow record of a sweep (see docs/mlflow_schema.md), written by one process.

Trials run anywhere in the cluster, but only the driver writes to MLflow: many processes
writing one SQLite file is a known source of "database is locked", and a single writer
also keeps working unchanged against a remote tracking server.

A tracking server that goes away is waited for, not fatal: every call is retried with
backoff until one shared deadline (`H2T_TRACKING_WAIT_S`, default 300 s, counted from the
first failure of the outage), and trial results are held meanwhile (tune_logging). Results
still held at the deadline go to a journal file; the next `Tracker` on the same URI and
experiment (the `--resume`) writes them first, so nothing that finished is lost or rerun.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from functools import lru_cache
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from head2toe.errors import H2TError
from head2toe.hashing import short_hash
from orchestrator.plan import FINAL_FOLD, TrialSpec

KIND, STAGE, SWEEP, KEY, CACHE, COMMIT = "h2t.kind", "h2t.stage", "h2t.sweep_id", "h2t.trial_key", "h2t.cache_key", "h2t.git_commit"
PARENT = "mlflow.parentRunId"
# What the MLflow UI calls an experiment's kind, and the value for training runs (the UI's own
# selector writes this tag; MLflow's GenAI demos write "genai_development").
EXPERIMENT_KIND, TRAINING = "mlflow.experimentKind", "custom_model_development"
NOTE = "mlflow.note.content"  # a run's description, shown on its page


def runs_page(server: str, experiment_id: str) -> str:
    """The experiment's runs table in the MLflow UI at `server`. The query matters: MLflow 3.17's
    UI picks GenAI or model-training pages from `workflowType` (else the browser's last choice,
    GenAI on a first visit), and only older UIs read the experiment-kind tag."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def summary_note(sweep_id: str, summary: dict[str, float], tasks: dict[tuple[str, str], int]) -> str:
    """The sweep run's description: the summary as a Markdown table."""
    rows = [f"| {bb} | {m} | {100 * summary[metric_key('test_accuracy', bb, m)]:.1f} | {n} |" for (bb, m), n in sorted(tasks.items())]
    head = (f"**Sweep {sweep_id}**: {summary['trials.final']:.0f} final and {summary['trials.cv']:.0f} CV trials "
            f"finished on {summary['tasks']:.0f} task(s), {summary['trials.failed']:.0f} failed run(s). "
            "The report, when written, is under Artifacts: report/report.html.")
    table = ["| backbone | method | test accuracy (%), mean over tasks | tasks |", "|---|---|---|---|", *rows]
    return "\n".join([head, "", *table])[:7500]  # MLflow keeps tag values up to 8000 characters


def metric_key(*parts: str) -> str:
    """An MLflow metric key from names that may hold characters MLflow refuses ("a+b" composites)."""
    return ".".join(re.sub(r"[^\w\-. :/]", "-", p) for p in parts)


@lru_cache(maxsize=1)
def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


WAIT_ENV, JOURNAL_ENV = "H2T_TRACKING_WAIT_S", "H2T_TRACKING_JOURNAL_DIR"


class TrackingUnavailable(H2TError):
    """The tracking server stayed unreachable past the deadline; the message says what is held where."""


def is_transient(e: BaseException) -> bool:
    """A failure to reach the server (refused, reset, timed out, 5xx after retries), not a bad request."""
    if isinstance(e, MlflowException):
        text = str(e)
        return text.startswith("API request to") and "failed with" in text
    return isinstance(e, (ConnectionError, TimeoutError))


class Outage:
    """Unavailability of one tracking server, shared by every caller so that all retries
    end at one deadline rather than each waiting its own."""

    def __init__(self, uri: str, wait_s: float | None = None):
        self.uri = uri
        self.wait_s = float(os.environ.get(WAIT_ENV, 300)) if wait_s is None else wait_s
        self.since: float | None = None
        self.last_error = ""
        self.held = ""  # where results that could not be written wait (set by the journal)

    def failed(self, e: BaseException) -> None:
        self.since = self.since or time.monotonic()
        self.last_error = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]

    def ok(self) -> None:
        self.since = None

    def remaining(self) -> float:
        return self.wait_s if self.since is None else self.wait_s - (time.monotonic() - self.since)

    def error(self) -> TrackingUnavailable:
        held = f"; {self.held}" if self.held else ""
        return TrackingUnavailable(f"tracking server {self.uri} unreachable for {self.wait_s:.0f} s ({self.last_error}){held}; "
                                   f"start it again and rerun with --resume (finished trials are not run again); "
                                   f"{WAIT_ENV} sets how long to wait")


def backoff_s(attempt: int) -> float:
    """Seconds before retry `attempt` (0-based) of a call to an unreachable server: 0.5, 1, 2 ... 15."""
    return min(0.5 * 2 ** attempt, 15.0)


class RetryingClient:
    """An MlflowClient whose calls wait out an outage: `backoff_s` between tries, up to the
    shared deadline, then TrackingUnavailable. Other errors pass through at once."""

    def __init__(self, client: MlflowClient, outage: Outage):
        self._client, self._outage = client, outage

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            attempt = 0
            while True:
                try:
                    out = attr(*args, **kwargs)
                    self._outage.ok()
                    return out
                except Exception as e:
                    if not is_transient(e):
                        raise
                    self._outage.failed(e)
                    left = self._outage.remaining()
                    if left <= 0:
                        raise self._outage.error() from None
                    time.sleep(min(backoff_s(attempt), left))
                    attempt += 1
        return call


def journal_path(uri: str, experiment: str) -> Path:
    root = Path(os.environ.get(JOURNAL_ENV) or "~/.cache/h2t/tracking-journal").expanduser()
    return root / f"{short_hash(f'{uri}|{experiment}', 16)}.jsonl"


class Tracker:
    """Sweep-, stage- and trial-level runs in one experiment."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_location: str | None = None):
        """`artifact_location` applies when the experiment is created: a local store keeps its
        artefacts beside the database, so copying the output folder keeps the selections."""
        self.uri = tracking_uri
        if tracking_uri.startswith(("http://", "https://")):  # fail fast per request; RetryingClient waits
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
            # MLflow prints two links per ended run (hundreds in a sweep), to a page that opens on the
            # GenAI view; the sweep prints its runs page once instead (runs_page)
            os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.outage = Outage(tracking_uri)
        self.raw = MlflowClient(tracking_uri)
        self.client = RetryingClient(self.raw, self.outage)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            self.experiment_id = self.client.create_experiment(experiment, artifact_location, tags={EXPERIMENT_KIND: TRAINING})
        else:
            self.experiment_id = exp.experiment_id
            if EXPERIMENT_KIND not in exp.tags:  # made by an older h2t: a kind someone chose stays
                self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND, TRAINING)
        self.experiment = experiment
        self.journal = journal_path(tracking_uri, experiment)
        self.replayed = self.replay()

    # -- held writes -----------------------------------------------------------------------
    def apply(self, op: dict, ids: dict[str, str], wait: bool = True) -> None:
        """One write: `ids` maps run handles to MLflow run ids (filled by "create").
        wait=False makes one attempt (a transient failure raises, for the caller to hold)."""
        c = self.client if wait else self.raw
        kind = op["op"]
        if kind == "create":
            if op.get("tried"):  # an earlier attempt may have reached the server before the connection broke
                found = c.search_runs([op["experiment_id"]], f"tags.`{KEY}` = '{op['tags'][KEY]}' and "
                                      f"attributes.start_time = {op['start_time']}", max_results=1)
                if found:
                    ids[op["h"]] = found[0].info.run_id
                    return
            op["tried"] = True
            run = c.create_run(op["experiment_id"], start_time=op["start_time"], tags=op["tags"], run_name=op["run_name"])
            ids[op["h"]] = run.info.run_id
            return
        run_id = ids[op["h"]]
        if kind == "log_batch":
            c.log_batch(run_id, metrics=[Metric(*m) for m in op.get("metrics", [])],
                        params=[Param(k, v) for k, v in op.get("params", {}).items()],
                        tags=[RunTag(k, v) for k, v in op.get("tags", {}).items()])
        elif kind == "log_dict":
            c.log_dict(run_id, op["obj"], op["path"])
        elif kind == "log_text":
            c.log_text(run_id, op["text"], op["path"])
        elif kind == "terminate":
            c.set_terminated(run_id, op["status"], end_time=op["end_time"])
        else:
            raise ValueError(f"unknown tracking op {kind!r}")

    def hold(self, ops: list[dict], ids: dict[str, str]) -> None:
        """Write ops that could not be sent to the journal (with the run ids known so far)."""
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        with self.journal.open("a") as f:
            for op in ops:
                f.write(json.dumps({**op, "run_id": ids.get(op["h"])}, default=str) + "\n")
        self.outage.held = f"{len(ops)} write(s) of finished or failed trials held in {self.journal}"

    def replay(self) -> int:
        """Send what an earlier driver held; returns how many writes were sent."""
        if not self.journal.exists():
            return 0
        ops = [json.loads(line) for line in self.journal.read_text().splitlines() if line.strip()]
        ids = {op["h"]: op["run_id"] for op in ops if op.get("run_id")}
        for i, op in enumerate(ops):
            try:
                self.apply(op, ids)
            except TrackingUnavailable:
                self.journal.write_text("".join(json.dumps({**o, "run_id": ids.get(o["h"])}) + "\n" for o in ops[i:]))
                raise
        self.journal.unlink()
        return len(ops)

    # -- queries ---------------------------------------------------------------------------
    def search(self, filter_string: str) -> list:
        if self.outage.held:  # results held in the journal count: send them before reading
            self.replay()
            self.outage.held = ""
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

    def find_sweep_run(self, sweep_id: str) -> str:
        """The run id of a sweep (`latest`: the newest sweep run of the experiment)."""
        f = f"tags.`{KIND}` = 'sweep'" + ("" if sweep_id == "latest" else f" and tags.`{SWEEP}` = '{sweep_id}'")
        runs = sorted(self.search(f), key=lambda r: r.info.start_time)
        if not runs:
            raise H2TError(f"no sweep {sweep_id!r} in experiment {self.experiment!r} at {self.uri}; "
                           f"pass a sweep id its runs carry (tag {SWEEP}) or `latest`")
        return runs[-1].info.run_id

    def summarize(self, sweep_id: str, run_id: str, counts: dict | None = None) -> dict[str, float]:
        """Summary metrics and description of the sweep run, so that its page says what happened:
        `test_accuracy.<backbone>.<method>` (mean over tasks of the mean over seeds, a fraction
        as the trials log it), `tasks`, `trials.cv` and `trials.final` (finished trials, once per
        key), `trials.failed` (FAILED trial runs, retried or not) and `forward_passes` (from
        `counts`). Read back from MLflow, so a resumed sweep counts what earlier drivers did;
        what it reads is one row per trial of this sweep."""
        finished: dict[str, object] = {}
        failed = 0
        for r in sorted(self.trial_runs(sweep_id), key=lambda r: r.info.start_time):
            if r.info.status == "FINISHED":
                finished[r.data.tags.get(KEY, r.info.run_id)] = r  # the newest run of a key counts
            failed += r.info.status == "FAILED"
        seeds: dict[tuple[str, str, str], list[float]] = {}
        for r in finished.values():
            p, acc = r.data.params, r.data.metrics.get("test_accuracy")
            if r.data.tags.get(STAGE) == "final" and acc is not None:
                seeds.setdefault((p["backbone"], p["method"], p["task"]), []).append(acc)
        tasks: dict[tuple[str, str], list[float]] = {}
        for (backbone, method, _), accs in seeds.items():
            tasks.setdefault((backbone, method), []).append(sum(accs) / len(accs))
        stages = [r.data.tags.get(STAGE) for r in finished.values()]
        summary = {metric_key("test_accuracy", bb, m): sum(v) / len(v) for (bb, m), v in sorted(tasks.items())}
        summary |= {"tasks": len({t for _, _, t in seeds}), "trials.cv": stages.count("cv"),
                    "trials.final": stages.count("final"), "trials.failed": failed}
        if counts and "forward_passes" in counts:
            summary["forward_passes"] = counts["forward_passes"]
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in summary.items()]
        for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(run_id, metrics=metrics[i:i + 1000])
        self.client.set_tag(run_id, NOTE, summary_note(sweep_id, summary, {k: len(v) for k, v in tasks.items()}))
        return summary

    def log_report(self, run_id: str, folder: Path) -> None:
        """The report folder (report.html, report.md, csv/, figures/, tables/) as the run's `report/` artefact."""
        self.client.log_artifacts(run_id, str(folder), "report")

    # -- trials ----------------------------------------------------------------------------
    # Trial writes are plain ops (JSON-able dicts on a run handle), so they can be held while
    # the server is away and journalled when it stays away.
    def open_trial_ops(self, spec: TrialSpec, key: str, hp_params: dict, sweep_id: str, parent: str, task_group: str) -> list[dict]:
        params = {
            "task": spec.task, "task_group": task_group, "backbone": spec.backbone.name, "backbone_timm_id": spec.backbone.timm_id(), "method": spec.method,
            "seed": spec.seed, "fold": FINAL_FOLD if spec.fold is None else spec.fold, "stage": spec.stage, **hp_params,
        }
        h = uuid.uuid4().hex
        tags = {KIND: "trial", STAGE: spec.stage, SWEEP: sweep_id, KEY: key, PARENT: parent, COMMIT: git_commit()}
        return [{"op": "create", "h": h, "experiment_id": self.experiment_id, "run_name": f"{spec.name()}_{key[:6]}", "tags": tags,
                 "start_time": int(time.time() * 1000)},
                {"op": "log_batch", "h": h, "params": {k: str(v) for k, v in params.items()}}]

    @staticmethod
    def close_trial_ops(h: str, row: dict) -> list[dict]:
        """Metrics, cache key, artefacts, then FINISHED."""
        now = int(time.time() * 1000)
        ops = [{"op": "log_batch", "h": h, "metrics": [[k, float(v), now, 0] for k, v in row["metrics"].items() if v is not None],
                "tags": {CACHE: row.get("cache_key", "")}}]
        if row.get("kept") is not None:
            ops.append({"op": "log_dict", "h": h, "obj": {"layers": row["kept"], "widths": row.get("widths", {})},
                        "path": "selection/kept_indices.json"})
        ops.append({"op": "log_text", "h": h, "path": "result.json",
                    "text": json.dumps({k: v for k, v in row.items() if k != "kept"}, default=str, indent=1)})
        ops.append({"op": "terminate", "h": h, "status": "FINISHED", "end_time": now})
        return ops

    @staticmethod
    def fail_trial_ops(h: str, reason: str) -> list[dict]:
        ops = [{"op": "log_batch", "h": h, "tags": {"h2t.error": reason}}] if reason else []
        return ops + [{"op": "terminate", "h": h, "status": "FAILED", "end_time": int(time.time() * 1000)}]

    def open_trial(self, spec: TrialSpec, key: str, hp_params: dict, sweep_id: str, parent: str, task_group: str) -> str:
        ids: dict[str, str] = {}
        ops = self.open_trial_ops(spec, key, hp_params, sweep_id, parent, task_group)
        for op in ops:
            self.apply(op, ids)
        return ids[ops[0]["h"]]

    def close_trial(self, run_id: str, row: dict) -> None:
        for op in self.close_trial_ops("run", row):
            self.apply(op, {"run": run_id})
