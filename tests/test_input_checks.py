"""Unit level of the input checks (the CLI level is tests/test_bad_input.py): image folders as
torchvision's ImageFolder reads them, images decoded once per file version, 16-bit and float
images scaled, diverged probes refused, JSON without NaN, duplicated YAML keys, and the
tracking journal replayed exactly once."""
from __future__ import annotations

import io
import json
import math
from contextlib import redirect_stdout

import numpy as np
import pytest
import yaml
from PIL import Image

from head2toe.errors import H2TError, ProbeDiverged
from head2toe.tasks import get_task
from head2toe.tasks.image_check import CHECK_CACHE_ENV, check_images, to_rgb8


@pytest.fixture(autouse=True)
def own_check_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CHECK_CACHE_ENV, str(tmp_path / "checked.sqlite"))


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def nested_folder(root):
    """Two classes; some images one and two levels down; hidden entries; a non-image file."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            for i, sub in enumerate(["", "a", "a/b", "", "c"]):
                save(root / split / c / sub / f"{i}.png", rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
        (root / split / "cat" / "notes.txt").write_text("not an image")
        save(root / split / "cat" / ".hidden" / "x.png", np.zeros((8, 8, 3), np.uint8))
        save(root / split / ".ipynb_checkpoints" / "y.png", np.zeros((8, 8, 3), np.uint8))
    return root


def test_imagefolder_finds_nested_images_like_torchvision(tmp_path):
    from torchvision.datasets import ImageFolder

    root = nested_folder(tmp_path / "data")
    task = get_task(f"imagefolder:{root}")
    assert task.classes == ["cat", "dog"]  # the hidden folder is no class
    for split in ("train", "test"):
        tv = ImageFolder(str(root / split), is_valid_file=lambda p: "/." not in p[len(str(root)):] and p.endswith(".png"),
                         allow_empty=True)
        assert tv.classes == [".ipynb_checkpoints", "cat", "dog"]  # torchvision counts the hidden folder (and, by default, refuses it as empty)
        ours = sorted((str(p), task.classes[y]) for p, y in task._files[split])
        theirs = sorted((p, tv.classes[y]) for p, y in tv.samples)
        assert ours == theirs and len(ours) == 10  # all 5 per class, 3 of them in subfolders


def test_image_check_decodes_once_per_file_version(tmp_path):
    paths = []
    for i in range(6):
        paths.append(tmp_path / f"{i}.jpg")
        Image.fromarray(np.full((16, 16, 3), 30 * i, np.uint8)).save(paths[-1])
    assert check_images(paths) == 6
    assert check_images(paths) == 0  # a rerun only stats the files
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(paths[2])  # a new version of one file
    assert check_images(paths) == 1
    data = paths[3].read_bytes()
    paths[3].write_bytes(data[: len(data) // 2])
    with pytest.raises(H2TError, match=r"unreadable image '.*3\.jpg' \(OSError: "):
        check_images(paths)
    with pytest.raises(H2TError):  # a bad file is never remembered as good
        check_images(paths)


def test_sixteen_bit_and_float_images_are_scaled_not_clipped(tmp_path):
    ramp16 = np.linspace(0, 65535, 256, dtype=np.float64).round().astype(np.uint16).reshape(16, 16)
    save(tmp_path / "g16.png", ramp16)
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode == "I;16"
        assert np.asarray(im.convert("RGB")).mean() > 250  # what plain convert gives: 99.6 % white
        rgb = to_rgb8(im)
    assert rgb.dtype == np.uint8 and rgb.shape == (16, 16, 3) and rgb.flags.writeable
    assert np.abs(rgb[..., 0].astype(int) - np.rint(ramp16 / 257)).max() == 0 and rgb.min() == 0 and rgb.max() == 255
    ramp = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    save(tmp_path / "f.tif", ramp)
    with Image.open(tmp_path / "f.tif") as im:
        assert im.mode == "F" and np.asarray(im.convert("RGB")).max() <= 1  # plain convert: all black
        rgb = to_rgb8(im)
    assert np.array_equal(rgb[..., 1], np.rint(ramp * 255).astype(np.uint8))
    with Image.open(tmp_path / "f.tif") as im:
        im32 = im.point(lambda v: v * 300)  # float values far outside [0, 1]
    with pytest.raises(ValueError, match=r"float image with values in \[0, 300\]"):
        to_rgb8(im32)


def test_imagefolder_loads_writable_arrays(tmp_path):
    root = nested_folder(tmp_path / "data")
    img = get_task(f"imagefolder:{root}").load("train").images[0]
    assert img.flags.writeable and img.dtype == np.uint8  # torch warns on read-only NumPy arrays


def test_a_diverged_probe_is_an_error_naming_its_config():
    from head2toe.probe import ProbeConfig, train_probes

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 16)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    ok, bad = ProbeConfig(0.1, 20), ProbeConfig(1e38, 20)
    assert len(train_probes(x, y, 3, [ok])) == 1
    with pytest.raises(ProbeDiverged, match=r"probe diverged .* lr=1e\+38 steps=20"):
        train_probes(x, y, 3, [ok, bad])
    with pytest.raises(ProbeDiverged, match=r"penalty=group coef=1e\+38"):
        train_probes(x, y, 3, [ProbeConfig(0.1, 20, "group", 1e38)])


def test_json_output_has_no_bare_nan():
    from jobs.common import emit_json

    buf = io.StringIO()
    with redirect_stdout(buf):
        emit_json({"loss": float("nan"), "acc": np.float32(0.5), "inf": [math.inf, 1], "arr": np.array([np.nan, 2.0])})
    assert json.loads(buf.getvalue()) == {"loss": None, "acc": 0.5, "inf": [None, 1], "arr": [None, 2.0]}
    assert "NaN" not in buf.getvalue()


def test_duplicated_key_in_a_nested_mapping_is_named_with_its_line(tmp_path):
    from orchestrator.config import load_config

    path = tmp_path / "dup.yaml"
    path.write_text("name: t\ntasks: [faces]\nbackbones: [efficientnet_lite0]\nmethods:\n"
                    "  linear: {lr: [0.1], steps: [5]}\n  linear: {lr: [0.5], steps: [5]}\n")
    with pytest.raises(H2TError, match=r"line 6, column 3: duplicated key 'linear' \(first at line 5\)"):
        load_config(path)
    path.write_text(yaml.safe_dump({"name": "t", "tasks": ["faces"], "backbones": ["efficientnet_lite0"],
                                    "methods": {"linear": {"lr": [0.1], "steps": [5]}}}))
    assert load_config(path).name == "t"


def test_held_trial_writes_are_replayed_once(tmp_path, monkeypatch):
    """What a driver could not send is journalled; the next Tracker sends it, and a create that
    may already have reached the server is not made twice."""
    from orchestrator.config import load_config
    from orchestrator.plan import cv_specs
    from orchestrator.tracking import JOURNAL_ENV, Tracker

    monkeypatch.setenv(JOURNAL_ENV, str(tmp_path / "journal"))
    from sweep_helpers import write_config

    spec = cv_specs(load_config(write_config(tmp_path / "t.yaml", seeds=[0], folds=[0])))[0]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "h2t-journal")
    (key, params), *_ = spec.runs()
    ops = tracker.open_trial_ops(spec, key, params, "sweep-1", "parent-1", "Offline")
    ids: dict[str, str] = {}
    tracker.apply(ops[0], ids)  # created, then (say) the connection broke before the answer came
    ops[0]["tried"] = True
    ops += tracker.close_trial_ops(ops[0]["h"], {"key": key, "metrics": {"val_accuracy": 0.75}, "cache_key": "c1"})
    tracker.hold(ops, {})  # as if no run id had come back
    again = Tracker(uri, "h2t-journal")
    assert again.replayed == len(ops) and not again.journal.exists()
    (run,) = again.trial_runs("sweep-1")
    assert run.info.status == "FINISHED" and run.data.metrics["val_accuracy"] == 0.75 and run.info.run_id == ids[ops[0]["h"]]
    assert Tracker(uri, "h2t-journal").replayed == 0


@pytest.mark.parametrize("field,value", [("lr", 0.0), ("lr", 11.0), ("lr", float("nan")), ("steps", 0), ("steps", 10**6),
                                         ("coef", -1e-3), ("target_size", 0), ("keep_fraction", 1.5)])
def test_one_rule_per_setting_for_library_config_and_cli(field, value):
    """HParams, ImageHParams, the sweep YAML and the `h2t run` flag refuse the same value in the
    same words (head2toe.limits), each naming where it came from."""
    import argparse
    import re

    from pydantic import ValidationError

    from head2toe.image_methods import ImageHParams
    from head2toe.limits import COEF, KEEP_FRACTION, LR, STEPS, TARGET_SIZE
    from head2toe.methods import HParams
    from jobs.common import fraction, learning_rate, non_negative, step_count, target_size
    from orchestrator.config import MethodGrid

    rule = {"lr": LR, "steps": STEPS, "coef": COEF, "target_size": TARGET_SIZE, "keep_fraction": KEEP_FRACTION}[field]
    flag = {"lr": learning_rate, "steps": step_count, "coef": non_negative, "target_size": target_size,
            "keep_fraction": fraction}[field]
    point = {"lr": 0.1, "steps": 5, "coef": 0.0, "target_size": 16}
    line = re.escape(f"{field} must be {rule.accepted}, got {value!r}")
    feature = {**point, "keep_fractions": (value,)} if field == "keep_fraction" else {**point, field: value}
    with pytest.raises(H2TError, match=f"^{line}$"):
        HParams(**feature)
    with pytest.raises(H2TError, match=f"^{line}$"):
        ImageHParams(**{**point, field: value})
    grid = {k: [v] for k, v in point.items()} | ({"keep_fractions": [value]} if field == "keep_fraction" else {field: [value]})
    with pytest.raises(ValidationError, match=re.escape(f"must be {rule.accepted}, got [{value!r}]")):
        MethodGrid(**grid)
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(f"--{field.replace('_', '-')} must be {rule.accepted}, got ")):
        flag(str(value))
    assert rule.ok({"lr": 0.1, "steps": 5, "coef": 0.0, "target_size": 16, "keep_fraction": 0.5}[field])


def test_folds_and_weights_have_one_source():
    from head2toe.backbones import WEIGHTS
    from head2toe.protocol import FOLDS, N_FOLDS, check_fold, cv_folds
    from orchestrator.config import BackboneConfig, SweepConfig

    assert FOLDS == tuple(range(N_FOLDS)) and len(cv_folds(1000)) == N_FOLDS
    assert SweepConfig.model_fields["folds"].default == list(FOLDS)
    with pytest.raises(H2TError, match=rf"^fold must be in 0..{N_FOLDS - 1}, got {N_FOLDS}$"):
        check_fold(N_FOLDS)
    assert BackboneConfig(name="efficientnet_lite0").weights == WEIGHTS[0] == "pretrained"
    with pytest.raises(ValueError, match="unknown weights 'imagenet'; choose one of: pretrained, random"):
        BackboneConfig(name="efficientnet_lite0", weights="imagenet")
