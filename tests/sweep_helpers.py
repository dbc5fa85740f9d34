"""Small sweep configs and MLflow queries shared by the sweep tests."""
from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import psutil
import ray

import yaml
from mlflow.tracking import MlflowClient

TINY = {
    "name": "tiny",
    "experiment": "h2t-tiny",
    "tasks": ["faces"],
    "backbones": [{"name": "efficientnet_lite0", "input_size": 64}],
    "methods": {
        "linear": {"lr": [0.1], "steps": [40], "coef": [0.0], "target_size": [128]},
        "head2toe": {"lr": [0.1], "steps": [40], "coef": [1.0e-4, 1.0e-3], "target_size": [128], "keep_fractions": [0.05, 0.2]},
    },
    "seeds": [0, 1],
    "folds": [0, 1],
}


def write_config(path: Path, **changes) -> Path:
    cfg = {**TINY, **changes}
    path.write_text(yaml.safe_dump(cfg))
    return path


def runs(tracking_uri: str, experiment: str = "h2t-tiny") -> list:
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=10000)


def finished_cv_runs(db: Path) -> int:
    """Read-only count straight from the SQLite file: polling through MLflow would race the
    driver's own schema migration."""
    import sqlite3

    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute(
                "SELECT count(*) FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                "WHERE r.status = 'FINISHED' AND t.key = 'h2t.stage' AND t.value = 'cv'"
            ).fetchone()[0]
    except sqlite3.OperationalError:  # tables not created yet, or locked for a moment
        return 0


def trial_status_counts(all_runs: list) -> Counter:
    return Counter((r.data.tags["h2t.stage"], r.info.status) for r in all_runs if r.data.tags.get("h2t.kind") == "trial")


@contextmanager
def local_ray(**env_vars: str) -> Iterator[None]:
    """A fresh local Ray on 2 CPUs (never an existing cluster); workers get `env_vars`."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False,
             runtime_env={"env_vars": env_vars} if env_vars else None)
    try:
        yield
    finally:
        ray.shutdown()


@contextmanager
def worker_killer(ready: Callable[[], bool] = lambda: True, title: str = "ray::ImplicitFunc.train",
                        chosen: Callable[[psutil.Process], bool] = lambda proc: True) -> Iterator[list[int]]:
    """While the block runs, SIGKILL the first Ray worker of ours whose process title starts
    with `title` (a trial by default; `ray::_extract_job` for extraction) and that `chosen`
    accepts, once `ready()` holds: the death a pre-empted node or the OOM killer gives.
    Yields the list of killed PIDs."""
    stop, killed = threading.Event(), []

    def watch() -> None:
        me = psutil.Process()
        while not stop.is_set() and not killed:
            if ready():
                for proc in me.children(recursive=True):
                    try:
                        if proc.cmdline()[:1] and proc.cmdline()[0].startswith(title) and chosen(proc):
                            os.kill(proc.pid, signal.SIGKILL)
                            killed.append(proc.pid)
                            break
                    except (psutil.Error, FileNotFoundError):
                        continue
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield killed
    finally:
        stop.set()
        thread.join()
