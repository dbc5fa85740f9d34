"""Faults survived and nothing unsafe: real Ray, real MLflow (SQLite), real Parquet cache.

- a trial worker killed from outside (SIGKILL) is retried and its MLflow run ends FAILED;
- a trial that runs out of GPU memory fails with one clear line and the sweep goes on;
- 50 trials (several in flight at once) log to the default SQLite store without a lock error;
- no pickle on cache or artefact files, checkpoints loaded with weights_only=True, servers on
  loopback, cluster.yaml valid for Ray's launcher, no public ports, no secrets.

The killed-driver resume test lives in tests/test_sweep.py; damaged cache files and
concurrent cache writers in tests/test_cache.py; refused input in tests/test_bad_input.py.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import ray
import yaml

from analysis.runs import load_runs
from head2toe.cache import open_cache
from orchestrator.config import load_config
from orchestrator.trial import SIMULATE_OOM
from orchestrator.tune_logging import ERROR_TAG
from sweep_helpers import local_ray as local_ray_session
from sweep_helpers import runs, trial_status_counts, worker_killer, write_config

REPO = Path(__file__).resolve().parents[1]
OOM_METHOD = "all_l2"  # the fault-injection hook makes this method's trials raise CUDA OOM (see orchestrator/trial.py)
LINEAR = {"lr": [0.1], "steps": [300], "coef": [0.0], "target_size": [16]}


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module; its workers carry the OOM hook, which only `all_l2` trials read."""
    with local_ray_session(**{SIMULATE_OOM: OOM_METHOD}):
        yield


@pytest.fixture(scope="module")
def cache_uri(tmp_path_factory) -> str:
    """A feature cache shared by this module's sweeps: faces is extracted once."""
    return str(tmp_path_factory.mktemp("features"))


def test_killed_trial_worker_is_retried_and_counted_once(local_ray, cache_uri, tmp_path):
    from orchestrator.sweep import run_sweep

    cfg = load_config(write_config(tmp_path / "kill.yaml", seeds=[0], folds=[0, 1], methods={"linear": LINEAR},
                                   max_concurrent_trials=1, max_failures=2, cache=cache_uri))
    with worker_killer() as killed:
        res = run_sweep(cfg, tmp_path / "out")
    assert len(killed) == 1
    assert res.counts["cv"] == {"trials": 2, "errors": 0} and res.counts["final"] == {"trials": 1, "errors": 0}
    all_runs = [r for r in runs(res.tracking_uri) if r.data.tags.get("h2t.kind") == "trial"]
    # the killed attempt's run ended FAILED, its retry FINISHED under the same trial key
    assert trial_status_counts(all_runs) == Counter({("cv", "FINISHED"): 2, ("cv", "FAILED"): 1, ("final", "FINISHED"): 1})
    (dead,) = [r for r in all_runs if r.info.status == "FAILED"]
    retry = [r for r in all_runs if r.info.status == "FINISHED" and r.data.tags["h2t.trial_key"] == dead.data.tags["h2t.trial_key"]]
    assert len(retry) == 1 and retry[0].info.start_time > dead.info.start_time
    assert "actor died" in dead.data.tags[ERROR_TAG]  # why it failed, in one line
    # the analysis counts every trial once: 2 CV + 1 final; with every run, the dead attempt too
    assert len(load_runs(res.tracking_uri, cfg.experiment_name)) == 3
    every = load_runs(res.tracking_uri, cfg.experiment_name, every_run=True)
    assert len(every) == 4 and Counter(every["status"]) == Counter({"FINISHED": 3, "FAILED": 1})


def test_out_of_memory_trial_fails_clearly_and_the_sweep_goes_on(local_ray, cache_uri, tmp_path, capsys):
    from orchestrator.features import sweep_keys
    from orchestrator.sweep import run_sweep

    cfg = load_config(write_config(tmp_path / "oom.yaml", seeds=[0], folds=[0], max_failures=1, cache=cache_uri,
                                   methods={"linear": LINEAR, OOM_METHOD: {**LINEAR, "coef": [1.0e-3]}}))
    res = run_sweep(cfg, tmp_path / "out")
    assert res.counts["cv"] == {"trials": 2, "errors": 1}  # the OOM trial, after its one retry
    assert res.counts["final"] == {"trials": 1, "errors": 0}  # linear went on to its final run
    all_runs = [r for r in runs(res.tracking_uri) if r.data.tags.get("h2t.kind") == "trial"]
    by = Counter((r.data.params["method"], r.data.tags["h2t.stage"], r.info.status) for r in all_runs)
    assert by == Counter({("linear", "cv", "FINISHED"): 1, ("linear", "final", "FINISHED"): 1, (OOM_METHOD, "cv", "FAILED"): 2})
    (key,) = sweep_keys(cfg, ("train",)).values()
    n_features = sum(x["width"] for x in open_cache(cfg.cache).read_meta(key)["layers"])
    for r in all_runs:
        if r.info.status == "FAILED":
            msg = r.data.tags[ERROR_TAG]
            assert msg.startswith("orchestrator.trial.TrialOutOfMemory: out of memory in trial cv_faces_efficientnet_lite0_all_l2_s0_f0_T16")
            assert "method=all_l2" in msg and "lr=0.1 steps=300 coef=0.001 target_size=16" in msg
            assert f"n_features={n_features} " in msg and "CUDA out of memory (simulated" in msg
    assert "out of memory in trial cv_faces_efficientnet_lite0_all_l2" in capsys.readouterr().err
    sweep_run = next(r for r in runs(res.tracking_uri) if r.data.tags.get("h2t.kind") == "sweep")
    assert sweep_run.info.status == "FAILED"  # a sweep with a failed trial says so


def test_a_diverged_probe_fails_its_trial_by_name(local_ray, cache_uri, tmp_path, capsys):
    """A group-lasso coefficient that overflows the loss: the trial fails as ProbeDiverged (its
    config in the h2t.error tag), never a FINISHED run with chance accuracy; the rest go on."""
    from orchestrator.sweep import run_sweep

    cfg = load_config(write_config(tmp_path / "diverge.yaml", seeds=[0], folds=[0], max_failures=0, cache=cache_uri,
                                   methods={"linear": LINEAR, "all_group": {**LINEAR, "coef": [1.0e38]}}))
    res = run_sweep(cfg, tmp_path / "out")
    assert res.counts["cv"] == {"trials": 2, "errors": 1} and res.counts["final"] == {"trials": 1, "errors": 0}
    all_runs = [r for r in runs(res.tracking_uri) if r.data.tags.get("h2t.kind") == "trial"]
    by = Counter((r.data.params["method"], r.data.tags["h2t.stage"], r.info.status) for r in all_runs)
    assert by == Counter({("linear", "cv", "FINISHED"): 1, ("linear", "final", "FINISHED"): 1, ("all_group", "cv", "FAILED"): 1})
    (failed,) = [r for r in all_runs if r.info.status == "FAILED"]
    assert failed.data.tags[ERROR_TAG].startswith("head2toe.errors.ProbeDiverged: probe diverged")
    assert "lr=0.1 steps=300 penalty=group coef=1e+38" in failed.data.tags[ERROR_TAG] and not failed.data.metrics
    assert "ProbeDiverged" in capsys.readouterr().err


@pytest.mark.parametrize("damage,fragment", [("nan", "features of layer 'blocks.0.0' hold NaN/Inf"), ("labels", "labels out of range")],
                         ids=["nan", "labels"])
def test_sweep_refuses_bad_features_before_any_trial(local_ray, tmp_path, damage, fragment):
    """Features a sweep reads are checked on the driver before any trial is scheduled."""
    from head2toe.errors import H2TError
    from orchestrator.sweep import run_sweep
    from test_bad_input import cached_faces

    cached_faces(tmp_path / "cache", damage)
    cfg = load_config(write_config(tmp_path / "bad.yaml", seeds=[0], folds=[0], cache=str(tmp_path / "cache"),
                                   backbones=[{"name": "efficientnet_lite0", "input_size": 64, "weights": "random"}],
                                   methods={"linear": {**LINEAR, "steps": [5]}}))
    with pytest.raises(H2TError, match=re.escape(fragment)):
        run_sweep(cfg, tmp_path / "out")
    all_runs = runs(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    assert not [r for r in all_runs if r.data.tags.get("h2t.kind") == "trial"]
    assert {r.info.status for r in all_runs} == {"FAILED"}  # the sweep run and its extract stage say so
    assert len(list((tmp_path / "cache").glob("*.parquet"))) == 2  # read, not rebuilt


@pytest.mark.slow
def test_fifty_concurrent_trials_log_to_sqlite_without_lock_errors(local_ray, cache_uri, tmp_path, capfd, caplog):
    """Up to four trials at a time (long enough to overlap); only the driver writes the SQLite store,
    so no "database is locked"."""
    from orchestrator.sweep import run_sweep

    # steps: trials must last long enough to overlap (workers no longer import MLflow: ~4 s shorter)
    grid = {"lr": [0.1, 0.05, 0.02, 0.01, 0.005], "steps": [3000, 6000], "coef": [0.0], "target_size": [16]}
    cfg = load_config(write_config(tmp_path / "fifty.yaml", seeds=[0], folds=[0, 1, 2, 3, 4], methods={"linear": grid},
                                   batch_hparams=False, resources={"trial": {"cpu": 0.5}}, cache=cache_uri))
    res = run_sweep(cfg, tmp_path / "out")
    assert res.tracking_uri.startswith("sqlite:///")  # the default local store
    assert res.counts["cv"] == {"trials": 50, "errors": 0}
    all_runs = [r for r in runs(res.tracking_uri) if r.data.tags.get("h2t.kind") == "trial"]
    assert trial_status_counts(all_runs) == Counter({("cv", "FINISHED"): 50, ("final", "FINISHED"): 1})
    assert len({r.data.tags["h2t.trial_key"] for r in all_runs}) == 51
    out, err = capfd.readouterr()
    assert "database is locked" not in out + err + caplog.text
    # several trials were in flight at once: count overlapping (start, end) intervals of the CV runs
    events = sorted((t, d) for r in all_runs if r.data.tags["h2t.stage"] == "cv"
                    for t, d in ((r.info.start_time, 1), (r.info.end_time, -1)))
    in_flight = peak = 0
    for _, d in events:
        in_flight += d
        peak = max(peak, in_flight)
    assert peak >= 2


# -- safety: no pickle, loopback servers, a clean cluster.yaml --------------------------------------

SOURCES = [p for d in ("head2toe", "orchestrator", "jobs", "analysis", "benchmarks") for p in (REPO / d).rglob("*.py")]


def _call_args(text: str, start: int) -> str:
    """The argument text of a call whose "(" ends just before `start` (balanced parentheses)."""
    depth = 1
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    return text[start:]


def test_no_pickle_loads_and_torch_load_is_weights_only():
    unsafe = re.compile(r"\b(c?pickle\.loads?|cloudpickle\.loads?|dill\.loads?|joblib\.load|read_pickle)\s*\(|allow_pickle\s*=\s*True")
    hits = [f"{p.relative_to(REPO)}:{i}" for p in SOURCES for i, line in enumerate(p.read_text().splitlines(), 1) if unsafe.search(line)]
    assert not hits, f"pickle loading in: {hits}"
    calls = 0
    for p in SOURCES:
        text = p.read_text()
        for m in re.finditer(r"\b(torch\.load|load_checkpoint)\(", text):
            call = _call_args(text, m.end())
            if "weights_only=True" in call:
                calls += 1
            elif m.group(1) == "load_checkpoint":
                # backbones.py's fallback for a timm without the argument: timm then calls torch.load,
                # whose default is weights_only=True on this torch (checked below)
                assert "except TypeError" in text[max(0, m.start() - 120):m.start()], f"{p}: {m.group(0)}{call})"
            else:
                pytest.fail(f"{p.relative_to(REPO)}: torch.load without weights_only=True: {m.group(0)}{call})")
    assert calls >= 3  # EfficientNet-Lite0 weights, timm checkpoints, image-method checkpoints


def test_a_malicious_checkpoint_is_refused_not_executed(tmp_path):
    """A checkpoint whose pickle would run code: loading it fails and the code never runs."""
    import pickle

    import torch

    from head2toe.backbones import create_backbone
    from head2toe.errors import H2TError

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": Payload(marker)}, evil)
    with pytest.raises(H2TError, match=r"cannot load checkpoint .*evil\.pth.*plain state dict"):
        create_backbone("resnet18", weights="pretrained", checkpoint=str(evil))
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(evil)  # torch's own default refuses it too
    assert not marker.exists()


def test_servers_bind_to_loopback_by_default():
    import inspect

    import mlflow.cli
    import ray.scripts.scripts as ray_cli

    assert inspect.signature(ray.init).parameters["dashboard_host"].default == "127.0.0.1"
    assert next(p.default for p in ray_cli.start.params if p.name == "dashboard_host") == "127.0.0.1"
    assert next(p.default for p in mlflow.cli.server.params if p.name == "host") == "127.0.0.1"
    # every place this repo starts or tells users to start a server, and names a host, names loopback
    texts = [*SOURCES, *(REPO / "tests").glob("*.py"), REPO / "cluster.yaml", REPO / "Makefile", REPO / "README.md",
             *(REPO / "docs").glob("*.md"), *(REPO / "configs").glob("*.yaml"), REPO / ".ci" / "run"]
    hosts = re.compile(r"(--host|--dashboard-host|dashboard_host|--node-ip-address)[\s=\"',]+([\w.:-]+)")
    found = 0
    for p in texts:
        if p.name in ("test_reliability.py", "reliability.md") or not p.exists():
            continue
        text = p.read_text()
        assert "0.0.0.0" not in text, f"{p.relative_to(REPO)} binds to every interface"
        for m in hosts.finditer(text):
            assert m.group(2) in ("127.0.0.1", "localhost"), f"{p.relative_to(REPO)}: {m.group(0)}"
            found += 1
    assert found >= 4


class Payload:
    """Pickles to `Path(marker).touch()`: what a hostile checkpoint could run on load."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _walk(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")
    else:
        yield path, node


def test_cluster_yaml_is_valid_private_and_has_no_secrets():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate_config(prepare_config(raw))  # Ray's own schema, as `ray up` checks it
    leaves = list(_walk(raw))
    secret_key = re.compile(r"password|secret|token|api_?key|access_?key|private_?key|credential", re.I)
    secret_value = re.compile(r"AKIA[0-9A-Z]{16}|-----BEGIN|ghp_[A-Za-z0-9]{20}|xox[bp]-|aws_secret_access_key|://[^/\s:@]+:[^/\s@]+@")
    assert not [p for p, _ in leaves if secret_key.search(p)]
    assert not [f"{p}: {v}" for p, v in leaves if isinstance(v, str) and secret_value.search(v)]
    assert set(raw.get("auth", {})) <= {"ssh_user", "ssh_private_key"}
    # no port opened or forwarded to the public: no security group rules, no docker port flags
    provider = raw["provider"]
    assert "security_group" not in provider or not [
        r for r in provider["security_group"].get("IpPermissions", []) if r.get("FromPort") != 22]
    assert not [f"{p}: {v}" for p, v in leaves if isinstance(v, str) and re.search(r"(^|\s)(-p|--publish)\s", v)]
    head = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head or "--dashboard-host" not in head
    assert not re.search(r"--ray-client-server-port|--dashboard-port", head)  # nothing extra exposed
