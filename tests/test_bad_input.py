"""Bad input is refused before any compute: one clear line on stderr, exit 2, no traceback.

Every case runs the real `h2t run` / `h2t sweep` entry point in a subprocess, because what
the user sees is the process's stderr and exit code. "Before any compute" is checked by
the clock and by what is left on disk: no feature file written, no MLflow store, no
output folder (a backbone pass or a Ray start would leave one or take much longer).
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from sweep_helpers import TINY

REPO = Path(__file__).resolve().parents[1]
MAX_SECONDS = 20  # interpreter start + imports; ~4-10 s here on 2 shared cores, a backbone pass or Ray start is more
RUN = ["--weights", "random", "--input-size", "64", "--lr", "0.1", "--steps", "5", "--coef", "0", "--target-size", "16"]


def h2t(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True, timeout=120, cwd=REPO)
    return proc, time.perf_counter() - start


def assert_refused(proc: subprocess.CompletedProcess, elapsed: float, *fragments: str) -> str:
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-1000:], err[-3000:])
    assert "Traceback" not in proc.stderr
    assert len(err.splitlines()) == 1, err
    for f in fragments:
        assert f in err, err
    assert elapsed < MAX_SECONDS, f"refusal took {elapsed:.1f} s"
    return err


def image_folder(root: Path, classes: list[str], n: int = 3, bad: str | None = None) -> Path:
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / split / c / f"{i}.png")
    if bad:
        (root / "train" / classes[0] / bad).write_bytes(b"not an image")
    return root


def make_folder(tmp_path: Path, case: str) -> tuple[str, str]:
    """An `imagefolder:` task with one fault, and the text its refusal must contain."""
    root = tmp_path / "images"
    if case == "missing":
        return f"imagefolder:{root}", "does not exist"
    if case == "empty":
        for s in ("train", "test"):
            for c in ("a", "b"):
                (root / s / c).mkdir(parents=True)
        return f"imagefolder:{root}", "holds no images"
    if case == "one_class":
        image_folder(root, ["only"])
        return f"imagefolder:{root}", "at least 2"
    image_folder(root, ["a", "b"], bad="broken.png")
    return f"imagefolder:{root}", str(root / "train" / "a" / "broken.png")


# -- h2t run -----------------------------------------------------------------------------------

RUN_CASES = {
    "unknown_task": (["--task", "no_such_task"], ["unknown task 'no_such_task'", "h2t tasks"]),
    "unknown_backbone": (["--task", "faces", "--backbone", "no_such_net"], ["unknown backbone 'no_such_net'"]),
    "unknown_method": (["--task", "faces", "--method", "no_such_method"], ["unknown method 'no_such_method'", "head2toe"]),
    "lr_zero": (["--task", "faces", "--lr", "0"], ["--lr must be > 0"]),
    "lr_negative": (["--task", "faces", "--lr", "-0.1"], ["--lr must be > 0"]),
    "steps_zero": (["--task", "faces", "--steps", "0"], ["--steps must be > 0"]),
    "keep_fraction_zero": (["--task", "faces", "--keep-fraction", "0"], ["--keep-fraction must be in (0, 1]"]),
    "keep_fraction_above_one": (["--task", "faces", "--keep-fraction", "1.5"], ["--keep-fraction must be in (0, 1]"]),
    "target_size_zero": (["--task", "faces", "--target-size", "0"], ["--target-size must be > 0"]),
}


@pytest.mark.parametrize("case", list(RUN_CASES))
def test_h2t_run_refuses(tmp_path, case):
    args, fragments = RUN_CASES[case]
    cache = tmp_path / "cache"
    # the bad flag comes last, so it overrides the valid defaults in RUN
    proc, elapsed = h2t("run", "--cache", str(cache), "--method", "linear", *RUN, *args)
    assert_refused(proc, elapsed, *fragments)
    assert not list(cache.rglob("*.parquet"))  # nothing extracted


@pytest.mark.parametrize("case", ["missing", "empty", "one_class", "unreadable"])
def test_h2t_run_refuses_bad_imagefolder(tmp_path, case):
    task, fragment = make_folder(tmp_path, case)
    cache = tmp_path / "cache"
    proc, elapsed = h2t("run", "--task", task, "--cache", str(cache), "--method", "linear", *RUN)
    assert_refused(proc, elapsed, fragment)
    assert not list(cache.rglob("*.parquet"))


def cached_faces(cache_dir: Path, damage: str) -> None:
    """Valid cache files for faces (random-init backbone, 64 px, T=16), with one fault in train:
    NaN/Inf in one layer, or labels the 2-class task cannot have (a foreign file)."""
    from head2toe.backbones import create_backbone
    from head2toe.cache import open_cache
    from head2toe.features import LayerFeatures
    from head2toe.provider import feature_key
    from head2toe.tasks import get_task

    task, backbone, cache = get_task("faces"), create_backbone("efficientnet_lite0", weights="random", input_size=64), open_cache(str(cache_dir))
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        n = task.split_sizes()[split]
        layers = {"blocks.0.0": rng.normal(size=(n, 8)).astype(np.float16), "pre_logits": rng.normal(size=(n, 16)).astype(np.float16)}
        labels = task.load(split).labels.copy()
        if split == "train" and damage == "nan":
            layers["blocks.0.0"][3, 2], layers["blocks.0.0"][7, 0] = np.nan, np.inf
        if split == "train" and damage == "labels":
            labels[:4] = [2, 5, 7, 2]
        key = feature_key(task, split, backbone, 16, "float16")
        cache.save(key, LayerFeatures(layers, labels), {"task": "faces", "split": split, "target_size": 16})


@pytest.mark.parametrize("damage,fragments", [
    ("nan", ["layer 'blocks.0.0'", "NaN/Inf in 2 of 100 rows", "task faces", "split train"]),
    ("labels", ["labels out of range", "[2, 5, 7]", "outside 0..1", "task faces"]),
], ids=["nan", "labels"])
def test_h2t_run_refuses_bad_cached_features(tmp_path, damage, fragments):
    """Features that come from the cache are checked before a probe trains on them."""
    cache = tmp_path / "cache"
    cached_faces(cache, damage)
    before = sorted(p.stat().st_mtime_ns for p in cache.glob("*.parquet"))
    proc, elapsed = h2t("run", "--task", "faces", "--cache", str(cache), "--method", "linear", *RUN)
    assert_refused(proc, elapsed, *fragments)
    assert sorted(p.stat().st_mtime_ns for p in cache.glob("*.parquet")) == before and len(before) == 2  # read, not rebuilt


# -- h2t sweep ---------------------------------------------------------------------------------

def _with(**changes) -> dict:
    return {**TINY, **changes}


def _grid(**changes) -> dict:
    return _with(methods={"head2toe": {**TINY["methods"]["head2toe"], **changes}})


SWEEP_CASES = {
    "unknown_task": (_with(tasks=["faces", "no_such_task"]), ["tasks", "unknown task(s) ['no_such_task']"]),
    "unknown_backbone": (_with(backbones=["no_such_net"]), ["backbones.0.name", "unknown backbone 'no_such_net'"]),
    "unknown_method": (_with(methods={"no_such_method": {"lr": [0.1], "steps": [5]}}), ["unknown method 'no_such_method'"]),
    "lr_zero": (_grid(lr=[0.1, 0.0]), ["methods.head2toe.lr", "must be > 0", "[0.0]"]),
    "steps_zero": (_grid(steps=[0]), ["methods.head2toe.steps", "positive integers", "[0]"]),
    "keep_fraction_zero": (_grid(keep_fractions=[0.0]), ["methods.head2toe.keep_fractions", "(0, 1]"]),
    "keep_fraction_above_one": (_grid(keep_fractions=[0.1, 1.5]), ["methods.head2toe.keep_fractions", "(0, 1]", "[1.5]"]),
    "target_size_zero": (_grid(target_size=[0]), ["methods.head2toe.target_size", "positive integers"]),
    "unknown_field": (_with(foldz=[0]), ["foldz", "Extra inputs are not permitted"]),
}


def sweep(tmp_path: Path, text: str) -> tuple[subprocess.CompletedProcess, float, Path]:
    path, out = tmp_path / "bad.yaml", tmp_path / "out"
    path.write_text(text)
    proc, elapsed = h2t("sweep", str(path), "--out", str(out), "--cache", str(tmp_path / "cache"), "--address", "local")
    return proc, elapsed, out


def assert_nothing_started(tmp_path: Path, out: Path) -> None:
    assert not out.exists()  # no MLflow store, no Tune folder: Ray never started
    assert not list(tmp_path.rglob("*.parquet")) and not list(tmp_path.rglob("mlflow.db"))


@pytest.mark.parametrize("case", list(SWEEP_CASES))
def test_h2t_sweep_refuses_bad_config(tmp_path, case):
    cfg, fragments = SWEEP_CASES[case]
    proc, elapsed, out = sweep(tmp_path, yaml.safe_dump(cfg))
    err = assert_refused(proc, elapsed, *fragments)
    assert str(tmp_path / "bad.yaml") in err  # names the file
    assert_nothing_started(tmp_path, out)


def test_h2t_sweep_refuses_malformed_yaml(tmp_path):
    text = yaml.safe_dump(TINY).replace("tasks:\n- faces", "tasks: [faces\n")
    proc, elapsed, out = sweep(tmp_path, text)
    assert_refused(proc, elapsed, "malformed YAML at line", str(tmp_path / "bad.yaml"))
    assert_nothing_started(tmp_path, out)


def test_h2t_sweep_refuses_missing_config(tmp_path):
    proc, elapsed = h2t("sweep", str(tmp_path / "absent.yaml"))
    assert_refused(proc, elapsed, "not found", "absent.yaml")


@pytest.mark.parametrize("case", ["missing", "empty", "one_class", "unreadable"])
def test_h2t_sweep_refuses_bad_imagefolder(tmp_path, case):
    task, fragment = make_folder(tmp_path, case)
    proc, elapsed, out = sweep(tmp_path, yaml.safe_dump(_with(tasks=[task])))
    assert_refused(proc, elapsed, "tasks", fragment)
    assert_nothing_started(tmp_path, out)
