"""End to end on loopback: `ray job submit` to a `ray start --head` cluster, and logging to
a real `mlflow server`. Both start real servers, so they are in the slow suite."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from sweep_helpers import runs, trial_status_counts, write_config

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=30)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


@pytest.fixture
def ray_head():
    """A `ray start --head --block` cluster bound to loopback, stopped with its process group.
    Its temp dir is short: Ray's Unix socket paths must fit in 107 bytes."""
    temp = tempfile.mkdtemp(prefix="h2tray", dir="/tmp")
    gcs, dash = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}  # as with an activated venv
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         f"--temp-dir={temp}", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{dash}/api/version", 120)
        yield f"http://127.0.0.1:{dash}", env
    finally:
        stop(proc)
        subprocess.run(["pkill", "-9", "-f", temp], check=False)  # workers outside the process group
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_job_submit_runs_a_sweep(ray_head, tmp_path):
    address, env = ray_head
    cfg = write_config(tmp_path / "job.yaml", seeds=[0], folds=[0, 1],
                       methods={"head2toe": {"lr": [0.1], "steps": [30], "coef": [1.0e-4], "target_size": [128], "keep_fractions": [0.1]}})
    out = tmp_path / "out"
    submit = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO), "--",
              "python", "-m", "jobs.sweep", str(cfg), "--out", str(out)]
    for _ in range(30):  # the head's job agent comes up a little after the dashboard answers
        job = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=600)
        if "No available agent" not in job.stderr + job.stdout:
            break
        time.sleep(3)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-2000:]
    assert "succeeded" in job.stdout
    counts = trial_status_counts(runs(f"sqlite:///{out / 'mlflow.db'}"))
    assert counts == Counter({("cv", "FINISHED"): 2, ("final", "FINISHED"): 1})


def test_sweep_logs_to_a_real_mlflow_server(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 120)
        uri = f"http://127.0.0.1:{port}"
        cfg = write_config(tmp_path / "srv.yaml", seeds=[0], folds=[0, 1])
        sweep = subprocess.run([sys.executable, "-m", "jobs.sweep", str(cfg), "--out", str(tmp_path / "out"),
                                "--tracking-uri", uri, "--address", "local"], capture_output=True, text=True, timeout=600)
        assert sweep.returncode == 0, sweep.stderr[-3000:]
        all_runs = runs(uri)
        assert trial_status_counts(all_runs) == Counter({("cv", "FINISHED"): 6, ("final", "FINISHED"): 2})
        assert not (tmp_path / "out" / "mlflow.db").exists()  # nothing went to the local default
        final = next(r for r in all_runs if r.data.tags.get("h2t.stage") == "final" and r.data.params.get("method") == "head2toe")
        from mlflow.tracking import MlflowClient

        kept = MlflowClient(uri).download_artifacts(final.info.run_id, "selection/kept_indices.json", str(tmp_path))
        assert Path(kept).stat().st_size > 10
    finally:
        stop(server)
