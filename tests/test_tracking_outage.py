"""A real `mlflow server` on 127.0.0.1 that goes away mid-sweep (the test kills it) and comes back
(the test starts it again on the same port and database).

1. Back within the wait: the sweep keeps running trials while the server is away (their
   results carry end times inside the outage), holds the results, sends them once the server
   answers, and finishes with every trial FINISHED exactly once.
2. Away past the wait: the sweep ends with one clear last line naming the journal that holds
   the results; `--resume` against the restarted server sends them and reruns nothing.
Slow (each server start takes 20-45 s here).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from sweep_helpers import finished_cv_runs, runs, trial_status_counts, write_config

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# 3 CV trials (a few seconds each, 2 at a time on 2 CPUs) and 1 final trial
# 6000 steps: a CV trial outlasts the lag of the queued MLflow writes, so one is still running when
# the server is killed (writes are sent by a thread: the first FINISHED reaches the server late)
CONFIG = {"seeds": [0], "folds": [0, 1, 2], "methods": {"linear": {"lr": [0.1], "steps": [6000], "coef": [0.0], "target_size": [128]}}}


class Server:
    """`mlflow server` on a fixed port and SQLite file, so a restart is the same server."""

    def __init__(self, root: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.db, self.root, self.proc = root / "server.db", root, None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.db}", "--artifacts-destination",
             str(self.root / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def wait(self, timeout: float = 180) -> float:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return time.time()
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"{self.uri} did not answer within {timeout} s")

    def kill(self) -> float:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        return time.time()


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path)
    srv.start()
    srv.wait()
    yield srv
    if srv.proc.poll() is None:
        srv.kill()


def sweep(cfg: Path, out: Path, uri: str, env: dict, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jobs.sweep", str(cfg), "--out", str(out), "--tracking-uri", uri,
                             "--address", "local", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env={**os.environ, **env})


def kill_after_first_cv_run(server: Server, proc: subprocess.Popen) -> float:
    deadline = time.time() + 300
    while finished_cv_runs(server.db) < 1:
        assert proc.poll() is None and time.time() < deadline, "the sweep ended before its first CV trial was logged"
        time.sleep(0.2)
    return server.kill()


def reported_trials(out: Path) -> int:
    """Trial results the driver has received, from the result.json files Tune's JSON logger writes
    on the driver (one line per report): visible while the tracking server is away."""
    return sum(len(f.read_text().splitlines()) for f in (out / "tune").glob("*/*/result.json"))


def trial_keys(all_runs: list, status: str = "FINISHED") -> Counter:
    return Counter(r.data.tags["h2t.trial_key"] for r in all_runs if r.data.tags.get("h2t.kind") == "trial" and r.info.status == status)


def test_server_gone_for_a_while_then_back(server, tmp_path):
    cfg = write_config(tmp_path / "outage.yaml", **CONFIG)
    journal = tmp_path / "journal"
    out_dir = tmp_path / "out"
    proc = sweep(cfg, out_dir, server.uri, {"H2T_TRACKING_WAIT_S": "240", "H2T_TRACKING_JOURNAL_DIR": str(journal)})
    down = kill_after_first_cv_run(server, proc)
    # the server stays away until a trial has reported during the outage (a server that restarts in
    # a few seconds would otherwise leave nothing to hold), then comes back
    seen, deadline = reported_trials(out_dir), time.time() + 300
    while reported_trials(out_dir) <= seen:
        assert proc.poll() is None and time.time() < deadline, "no trial reported while the server was away: the driver stalled"
        time.sleep(0.2)
    server.start()
    up = server.wait()
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "unreachable" in err and "back after" in err
    # one link to the experiment's training-runs page, not MLflow's two per ended run
    assert "View run" not in out and f"runs page:  {server.uri}/#/experiments/" in out and "workflowType=machine_learning" in out, out[-2000:]
    all_runs = runs(server.uri)
    assert trial_status_counts(all_runs) == Counter({("cv", "FINISHED"): 3, ("final", "FINISHED"): 1})
    keys = trial_keys(all_runs)
    assert len(keys) == 4 and set(keys.values()) == {1}
    during = [r for r in all_runs if r.data.tags.get("h2t.kind") == "trial" and down < r.info.end_time / 1000 < up]
    assert during, "no trial finished while the server was away: the driver stalled"
    assert not list(journal.glob("*.jsonl"))  # nothing left held


def test_server_gone_past_the_wait_then_resume(server, tmp_path):
    cfg = write_config(tmp_path / "gone.yaml", **CONFIG)
    journal = tmp_path / "journal"
    env = {"H2T_TRACKING_WAIT_S": "3", "H2T_TRACKING_JOURNAL_DIR": str(journal)}
    proc = sweep(cfg, tmp_path / "out", server.uri, env)
    kill_after_first_cv_run(server, proc)
    out, err = proc.communicate(timeout=600)  # the server stays away until the sweep has given up
    server.start()
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 2, err[-3000:]
    assert last.startswith("h2t: error: tracking server") and "held in" in last and "--resume" in last, last
    # none of our own lines is a traceback; a Ray worker that the shutdown's SIGTERM meets mid-trial
    # may log Ray's own exit trace, forwarded with its "(run_trial pid=N)" prefix
    ours = [line for line in err.splitlines() if "pid=" not in line[:40]]
    assert not any("Traceback" in line for line in ours), "\n".join(ours)[-3000:]
    (held,) = journal.glob("*.jsonl")
    assert str(held) in last
    server.wait()
    before = runs(server.uri)
    assert 1 <= trial_status_counts(before)[("cv", "FINISHED")] < 3  # the rest are held, not lost
    proc = sweep(cfg, tmp_path / "out", server.uri, env, "--resume")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    all_runs = runs(server.uri)
    cv = [r for r in all_runs if r.data.tags.get("h2t.stage") == "cv" and r.data.tags.get("h2t.kind") == "trial"]
    assert len(cv) == 3 and all(r.info.status == "FINISHED" for r in cv)  # held results written, no CV trial run again
    assert trial_status_counts(all_runs) == Counter({("cv", "FINISHED"): 3, ("final", "FINISHED"): 1})
    assert set(trial_keys(all_runs).values()) == {1}
    assert not held.exists()
