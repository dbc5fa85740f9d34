"""The Parquet feature cache: format, keys, validation and rebuild, atomic concurrent
writes, S3 through a real moto server, and `h2t run` / `h2t extract` on a warm cache."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from head2toe.backbones import create_backbone
from head2toe.cache import FeatureCache, open_cache
from head2toe.features import LayerFeatures
from head2toe.provider import FeatureProvider, feature_key
from head2toe.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]


def synthetic(n: int = 40, seed: int = 0, dtype=np.float16) -> LayerFeatures:
    rng = np.random.default_rng(seed)
    layers = {"blocks.0.0.bn1": rng.standard_normal((n, 24)), "blocks.1": rng.standard_normal((n, 7)), "pre_logits": rng.standard_normal((n, 5))}
    return LayerFeatures({k: v.astype(dtype) for k, v in layers.items()}, rng.integers(0, 3, n), {})


@pytest.fixture(scope="module")
def tiny():
    """Random-init EfficientNet-Lite0 at 32 px: real taps, well under a second per 100 images."""
    return create_backbone("efficientnet_lite0", weights="random", input_size=32)


@pytest.fixture(scope="module")
def faces():
    return get_task("faces")


@pytest.mark.parametrize("dtype,group_bytes", [(np.float16, None), (np.float32, None), (np.float16, 1000)])
def test_roundtrip_projection_and_footer(tmp_path, monkeypatch, dtype, group_bytes):
    if group_bytes:  # several row groups: the streaming layout of large splits
        monkeypatch.setattr("head2toe.cache.format.ROW_GROUP_BYTES", group_bytes)
    cache = FeatureCache(str(tmp_path), dtype=np.dtype(dtype).name)
    feats = synthetic(dtype=dtype)
    cache.save("k", feats, {"task": "t", "split": "train"})
    assert pq.ParquetFile(cache.path("k")).metadata.num_row_groups == (1 if not group_bytes else 4)
    got = cache.load("k", ["blocks.1", "pre_logits"])
    assert got.layer_names == ["blocks.1", "pre_logits"]
    for name in got.layer_names:
        assert got.layers[name].dtype == dtype and np.array_equal(got.layers[name], feats.layers[name])
    assert np.array_equal(got.labels, feats.labels) and got.meta["task"] == "t"
    f = pq.ParquetFile(cache.path("k"))
    assert f.schema_arrow.field("blocks.0.0.bn1").type == pa.binary(24 * np.dtype(dtype).itemsize)
    assert f.schema_arrow.field("index").type == pa.int64()
    doc = cache.read_meta("k")
    assert doc["dtype"] == np.dtype(dtype).name and [x["width"] for x in doc["layers"]] == [24, 7, 5]
    groups = doc["checksum"]["row_groups"]
    assert [g["rows"] for g in groups] == ([40] if not group_bytes else [11, 11, 11, 7])
    assert all(set(g["columns"]) == {"blocks.0.0.bn1", "blocks.1", "pre_logits", "index", "label"} for g in groups)
    assert cache.contains("k", verify_data=False) and not cache.contains("absent", verify_data=False)
    assert cache.load("absent") is None and not cache.rejected
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]


def test_key_is_a_digest_of_exactly_the_inputs(tiny, faces):
    key = feature_key(faces, "train", tiny, 64)
    assert key == feature_key(faces, "train", create_backbone("efficientnet_lite0", weights="random", input_size=32), 64)
    others = {
        "target size": feature_key(faces, "train", tiny, 128),
        "split": feature_key(faces, "test", tiny, 64),
        "dtype": feature_key(faces, "train", tiny, 64, "float32"),
        "weights": feature_key(faces, "train", create_backbone("efficientnet_lite0", weights="pretrained", input_size=32), 64),
        "input size": feature_key(faces, "train", create_backbone("efficientnet_lite0", weights="random", input_size=48), 64),
        "task": feature_key(get_task("digits"), "train", tiny, 64),
    }
    assert len({key, *others.values()}) == len(others) + 1, others


def _flip(path: str) -> None:
    data = bytearray(Path(path).read_bytes())
    mid = len(data) // 2
    data[mid : mid + 16] = bytes(b ^ 0xFF for b in data[mid : mid + 16])
    Path(path).write_bytes(bytes(data))


def _truncate(path: str) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) - 100])


def _foreign(path: str) -> None:
    pq.write_table(pa.table({"x": [1, 2, 3]}), path)


@pytest.mark.parametrize("damage,reason", [(_flip, "checksum mismatch"), (_truncate, "truncated"), (_foreign, "no h2t metadata")])
def test_damaged_file_is_reported_and_rebuilt(tmp_path, tiny, faces, caplog, damage, reason):
    cache = open_cache(str(tmp_path))
    first = FeatureProvider(tiny, store=cache, progress=False)
    want = first.get(faces, "train", [64])[64]
    want = LayerFeatures({k: v.copy() for k, v in want.layers.items()}, want.labels.copy())  # it maps the file we damage in place
    assert first.forward_passes == 100
    key = feature_key(faces, "train", tiny, 64)
    damage(cache.path(key))
    with caplog.at_level(logging.WARNING, logger="head2toe.cache"):
        second = FeatureProvider(tiny, store=cache, progress=False)
        got = second.get(faces, "train", [64])[64]
    assert second.forward_passes == 100, "a damaged file must be recomputed, never used"
    assert any(cache.path(key) in r.message and reason in r.message for r in caplog.records), caplog.text
    for name in want.layer_names:
        assert np.array_equal(got.layers[name], want.layers[name])
    third = FeatureProvider(tiny, store=cache, progress=False)
    third.get(faces, "train", [64])
    assert third.forward_passes == 0, "the rebuilt file is valid"


def test_file_of_another_key_is_not_used(tmp_path):
    cache = open_cache(str(tmp_path))
    cache.save("a", synthetic(seed=1), {})
    os.replace(cache.path("a"), cache.path("b"))
    assert cache.load("b") is None and "holds key 'a'" in cache.rejected[-1][1]


WRITER = """
import sys, time, pathlib
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
from test_cache import synthetic
from head2toe.cache import open_cache
me, gate = int(sys.argv[1]), pathlib.Path({gate!r})
cache = open_cache({uri!r})
feats = synthetic(n=20000, seed=me)
(gate / f"ready-{{me}}").touch()
while len(list(gate.iterdir())) < 2:  # start together, so the writes overlap
    time.sleep(0.01)
for _ in range(10):
    cache.save("same", feats, {{"writer": me}})
"""


def test_two_concurrent_writers_leave_one_valid_file(tmp_path):
    gate = tmp_path.parent / f"{tmp_path.name}-gate"
    gate.mkdir()
    code = WRITER.format(root=str(ROOT), tests=str(ROOT / "tests"), uri=str(tmp_path), gate=str(gate))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(seed)]) for seed in (1, 2)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    cache = open_cache(str(tmp_path))
    got = cache.load("same")
    assert got is not None and not cache.rejected
    expected = synthetic(n=20000, seed=got.meta["writer"])
    assert all(np.array_equal(got.layers[k], expected.layers[k]) for k in expected.layers)
    assert sorted(os.listdir(tmp_path)) == ["same.parquet"], "no temporary files left behind"


@pytest.fixture(scope="module")
def s3_uri():
    """A real S3 API (moto's server) on loopback, with an empty bucket."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1").create_bucket(Bucket="h2t")
    yield f"s3://h2t/features?endpoint_override={host}:{port}&scheme=http&region=us-east-1", f"http://{host}:{port}"
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_same_cache_through_s3(s3_uri, tiny, faces, caplog):
    import boto3

    uri, endpoint = s3_uri
    cold = FeatureProvider(tiny, store=open_cache(uri), progress=False)
    want = cold.get(faces, "test", [64])[64]
    assert cold.forward_passes == 100
    warm = FeatureProvider(tiny, store=open_cache(uri), progress=False)
    got = warm.get(faces, "test", [64], layers=["pre_logits", "logits"])[64]
    assert warm.forward_passes == 0 and got.layer_names == ["pre_logits", "logits"]
    assert np.array_equal(got.layers["logits"], want.layers["logits"])
    key = feature_key(faces, "test", tiny, 64)
    streamed = [c.layers["logits"] for c in open_cache(uri).iter_rows(key, ["logits"])]  # Arrow's row-group reads
    assert np.array_equal(np.concatenate(streamed), want.layers["logits"]) and open_cache(uri).entry_files(key) == [f"{key}.parquet"]
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="h2t")["Contents"] if not o["Key"].endswith("/")]  # no temp objects
    assert keys == [f"features/{feature_key(faces, 'test', tiny, 64)}.parquet"], keys
    body = s3.get_object(Bucket="h2t", Key=keys[0])["Body"].read()
    s3.put_object(Bucket="h2t", Key=keys[0], Body=body[: len(body) // 2])  # truncated object
    with caplog.at_level(logging.WARNING, logger="head2toe.cache"):
        again = FeatureProvider(tiny, store=open_cache(uri), progress=False)
        again.get(faces, "test", [64])
    assert again.forward_passes == 100 and "truncated" in caplog.text


def _cli(*argv: str, cache: Path) -> dict:
    env = {**os.environ, "H2T_NO_REEXEC": "1"}
    out = subprocess.run([sys.executable, "-m", "jobs.cli", *argv, "--cache", str(cache), "--json"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "not writable" not in out.stderr, out.stderr[-2000:]  # no torch warning about read-only cached arrays
    return json.loads(out.stdout.strip().splitlines()[-1])


def _in_process(argv: list[str], capsys) -> dict:
    from jobs.cli import main

    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


RUN = ["run", "--task", "faces", "--input-size", "32", "--method", "linear", "--lr", "0.1", "--steps", "20", "--coef", "0"]


def test_second_h2t_run_does_no_forward_pass(tmp_path, capsys):
    cold = _in_process([*RUN, "--target-size", "64", "--cache", str(tmp_path), "--json"], capsys)
    assert cold["forward_passes"] == 200  # 100 train + 100 test images, once
    warm = _cli(*RUN, "--target-size", "64", cache=tmp_path)  # a new process: only the files carry over
    assert warm["forward_passes"] == 0 and warm["test_accuracy"] == cold["test_accuracy"]


def test_h2t_extract_fills_every_target_size_in_one_pass(tmp_path, capsys):
    argv = ["extract", "--task", "faces", "--input-size", "32", "--target-size", "64", "128", "--cache", str(tmp_path), "--json"]
    first = _in_process(argv, capsys)
    assert first["forward_passes"] == 200 and first["written"] == 4 and first["written_bytes"] > 0
    again = _in_process(argv, capsys)
    assert again["forward_passes"] == 0 and again["written"] == 0
    run = _in_process([*RUN, "--target-size", "128", "--cache", str(tmp_path), "--json"], capsys)
    assert run["forward_passes"] == 0


def test_h2t_extract_refuses_without_room(tmp_path):
    env = {**os.environ, "H2T_NO_REEXEC": "1"}
    out = subprocess.run([sys.executable, "-m", "jobs.extract", "--task", "faces", "--input-size", "32", "--target-size", "64",
                          "--cache", str(tmp_path), "--min-free", "1000000T"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    line = out.stderr.strip().splitlines()[-1]
    assert "free but this extraction writes" in line and "--cache" in line and "Traceback" not in out.stderr
    assert not any(tmp_path.iterdir())
