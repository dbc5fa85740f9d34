"""The MLflow UI a person opens on a sweep: a real `mlflow server` on loopback holding what
the Tracker writes (sweep run, stage runs, trials, summary, report), looked at in headless
Chromium. The runs page (the link h2t prints) opens on the runs, not the GenAI overview, lists
the sweep run, and, expanded, its stage runs and every trial; the sweep run's page shows its
summary metrics. Slow: the server takes 20-40 s to start here."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from head2toe.hparams import HParams
from orchestrator.config import BackboneConfig
from orchestrator.plan import FeatureTrial
from orchestrator.tracking import EXPERIMENT_KIND, TRAINING, Tracker, runs_page

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import check_mlflow_ui  # noqa: E402
from check_report_render import find_browser  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.skipif(find_browser() is None, reason="no chromium binary installed")]
BIN = Path(sys.executable).parent
BACKBONE = "efficientnet_lite0"
# test accuracy per (task, method), seeds 0 and 1
ACC = {("caltech101", "linear"): (0.60, 0.62), ("caltech101", "head2toe"): (0.70, 0.72),
       ("eurosat", "linear"): (0.80, 0.82), ("eurosat", "head2toe"): (0.90, 0.92)}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-ui")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'ui.db'}", "--artifacts-destination",
         str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # no GenAI job runner: starts in half the time
    uri, deadline = f"http://127.0.0.1:{port}", time.time() + 180
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, "mlflow server did not come up"
                time.sleep(0.3)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its worker
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def trial(tracker: Tracker, parent: str, stage: str, task: str, method: str, seed: int, metrics: dict, ok: bool = True) -> str:
    spec = FeatureTrial(stage, task, BackboneConfig(name=BACKBONE), method, seed, 0 if stage == "cv" else None,
                        (HParams(0.1, 10, 0.0, 512),))
    key = f"{stage}-{task}-{method}-{seed}"
    run_id = tracker.open_trial(spec, key, {"lr": 0.1}, "sweep1", parent, "Natural")
    if ok:
        tracker.close_trial(run_id, {"metrics": metrics, "cache_key": "c1"})
    else:
        for op in tracker.fail_trial_ops("run", "the actor died"):
            tracker.apply(op, {"run": run_id})
    return f"{spec.name()}_{key[:6]}"


@pytest.fixture(scope="module")
def sweep(server, tmp_path_factory):
    """One sweep as the driver writes it, through the Tracker: 4 CV trials, 8 final trials (one
    died and was retried), the summary and the report."""
    tracker = Tracker(server, "h2t-ui")
    parent = tracker.sweep_run("sweep1", "cfg1", "ui", "name: ui\n")
    names = {"sweep": "sweep-ui-sweep1", "stages": ["cv", "final"], "trials": set()}
    cv = tracker.stage_run("sweep1", parent, "cv")
    for task, method in ACC:
        names["trials"].add(trial(tracker, cv, "cv", task, method, 0, {"val_accuracy": 0.5}))
    tracker.end(cv)
    final = tracker.stage_run("sweep1", parent, "final")
    trial(tracker, final, "final", "eurosat", "head2toe", 1, {}, ok=False)  # died, then retried below
    for (task, method), accs in ACC.items():
        for seed, acc in enumerate(accs):
            names["trials"].add(trial(tracker, final, "final", task, method, seed, {"test_accuracy": acc}))
    tracker.end(final)
    report = tmp_path_factory.mktemp("report")
    (report / "report.html").write_text("<html><body>report</body></html>")
    (report / "figures").mkdir()
    (report / "figures" / "cost.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    summary = tracker.summarize("sweep1", parent, {"forward_passes": 1234})
    tracker.log_report(parent, report)
    tracker.end(parent)
    return tracker, parent, summary, names


def test_sweep_run_carries_summary_and_report(sweep, server):
    tracker, parent, summary, _ = sweep
    means = {"linear": (0.61 + 0.81) / 2, "head2toe": (0.71 + 0.91) / 2}  # mean over tasks of the mean over seeds
    expected = {f"test_accuracy.{BACKBONE}.{m}": v for m, v in means.items()}
    expected |= {"tasks": 2, "trials.cv": 4, "trials.final": 8, "trials.failed": 1, "forward_passes": 1234}
    assert summary == pytest.approx(expected)
    client = MlflowClient(server)
    run = client.get_run(parent)
    assert run.data.metrics == pytest.approx(expected)
    note = run.data.tags["mlflow.note.content"]  # the run's description
    assert f"| {BACKBONE} | head2toe | 81.0 | 2 |" in note and f"| {BACKBONE} | linear | 71.0 | 2 |" in note
    assert "8 final and 4 CV trials finished on 2 task(s), 1 failed run(s)" in note
    assert sorted(a.path for a in client.list_artifacts(parent, "report")) == ["report/figures", "report/report.html"]
    assert client.get_experiment(tracker.experiment_id).tags[EXPERIMENT_KIND] == TRAINING


def test_reused_experiment_gets_the_training_kind(server):
    client = MlflowClient(server)
    old = client.create_experiment("h2t-older")  # as an earlier h2t made it: no kind
    chosen = client.create_experiment("h2t-chosen", tags={EXPERIMENT_KIND: "finetuning"})
    Tracker(server, "h2t-older")
    Tracker(server, "h2t-chosen")
    assert client.get_experiment(old).tags[EXPERIMENT_KIND] == TRAINING
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND] == "finetuning"  # someone's choice stays


def test_runs_page_lists_sweep_and_nested_trials_in_chromium(sweep, server, tmp_path):
    tracker, parent, _, names = sweep
    with check_mlflow_ui.Chromium() as page:
        top = check_mlflow_ui.runs_listed(page, runs_page(server, tracker.experiment_id))
        assert page.evaluate("location.hash").startswith(f"#/experiments/{tracker.experiment_id}/runs")  # not the traces overview
        assert top == [names["sweep"]]  # children folded under their parent
        every = [names["sweep"], *names["stages"], *names["trials"]]
        listed = check_mlflow_ui.runs_listed(page, runs_page(server, tracker.experiment_id), [names["sweep"], *names["stages"]], every)
        page.screenshot(tmp_path / "runs.png")
        assert set(listed) == set(every), sorted(set(every) - set(listed))
        assert len(listed) == 1 + 2 + 4 + 9  # the died final run is listed too, under the same name as its retry
        page.open(f"{server}/#/experiments/{tracker.experiment_id}/runs/{parent}?workflowType=machine_learning")
        shown = page.wait_for("document.body.innerText.includes('test_accuracy.efficientnet_lite0.head2toe')"
                              " && document.body.innerText.includes('trials.final')", 60)
        page.screenshot(tmp_path / "sweep_run.png")
        assert shown, "the sweep run's page does not show its summary metrics"
    assert (tmp_path / "runs.png").read_bytes().startswith(b"\x89PNG")
