"""Bad input is refused before any compute: one clear line on stderr, exit 2, no traceback.

Every case runs the real `h2t run` / `h2t sweep` entry point in a subprocess, because what
the user sees is the process's stderr and exit code. "Before any compute" is checked by
the clock and by what is left on disk: no feature file written, no MLflow store, no
output folder (a backbone pass or a Ray start would leave one or take much longer).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from sweep_helpers import TINY

REPO = Path(__file__).resolve().parents[1]
MAX_SECONDS = 30  # interpreter start + imports: ~4-10 s alone on 2 cores, up to ~29 s measured at load 17; a backbone pass or Ray start is more
RUN = ["--weights", "random", "--input-size", "64", "--lr", "0.1", "--steps", "5", "--coef", "0", "--target-size", "16"]


def h2t(*args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, **(env or {})})
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


def bomb_png(path: Path, side: int = 15000) -> None:
    """A valid PNG header claiming side x side pixels (above Pillow's decompression-bomb limit)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    ihdr = side.to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0])  # 1-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


IMAGE_FAULTS = ["missing", "empty", "one_class", "unreadable", "truncated_jpeg", "bomb", "empty_file", "empty_class",
                "float_out_of_range"]


def make_folder(tmp_path: Path, case: str) -> tuple[str, str]:
    """An `imagefolder:` task with one fault, and the text its refusal must contain."""
    root = tmp_path / "images"
    bad = root / "train" / "a"
    if case in ("truncated_jpeg", "bomb", "empty_file", "empty_class", "float_out_of_range"):
        image_folder(root, ["a", "b"])
    if case == "truncated_jpeg":  # opens and passes verify(); only decoding finds the missing data
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(bad / "cut.jpg", quality=95)
        data = (bad / "cut.jpg").read_bytes()
        (bad / "cut.jpg").write_bytes(data[: len(data) // 2])
        return f"imagefolder:{root}", f"{bad / 'cut.jpg'}' (OSError: image file is truncated"
    if case == "bomb":
        bomb_png(bad / "huge.png")
        return f"imagefolder:{root}", f"{bad / 'huge.png'}' (too large to decode safely: Image size (225000000 pixels)"
    if case == "empty_file":
        (bad / "zero.png").write_bytes(b"")
        return f"imagefolder:{root}", f"{bad / 'zero.png'}' (empty file)"
    if case == "empty_class":  # torchvision's ImageFolder refuses this too (allow_empty=False)
        (root / "train" / "c").mkdir()
        return f"imagefolder:{root}", "class folder(s) ['c'] hold no images"
    if case == "float_out_of_range":
        Image.fromarray(np.full((8, 8), 40.0, np.float32)).save(bad / "hdr.tif")
        return f"imagefolder:{root}", f"{bad / 'hdr.tif'}' (ValueError: float image with values in [40, 40]"
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
    "unknown_task": (["--task", "no_such_task"], ["unknown task 'no_such_task'", "choose one of: ", "faces", "h2t tasks"]),
    "unknown_backbone": (["--task", "faces", "--backbone", "no_such_net"], ["unknown backbone 'no_such_net'", "choose one of: efficientnet_lite0"]),
    "unknown_method": (["--task", "faces", "--method", "no_such_method"], ["unknown method 'no_such_method'", "choose one of: linear", "head2toe_ft"]),
    "lr_zero": (["--task", "faces", "--lr", "0"], ["--lr must be > 0"]),
    "lr_negative": (["--task", "faces", "--lr", "-0.1"], ["--lr must be > 0"]),
    "steps_zero": (["--task", "faces", "--steps", "0"], ["--steps must be > 0"]),
    "keep_fraction_zero": (["--task", "faces", "--keep-fraction", "0"], ["--keep-fraction must be in (0, 1]"]),
    "keep_fraction_above_one": (["--task", "faces", "--keep-fraction", "1.5"], ["--keep-fraction must be in (0, 1]"]),
    "target_size_zero": (["--task", "faces", "--target-size", "0"], ["--target-size must be > 0"]),
    "lr_huge": (["--task", "faces", "--lr", "1e308"], ["--lr must be > 0 and <= 10, got 1e308"]),
    "lr_nan": (["--task", "faces", "--lr", "nan"], ["--lr must be > 0 and <= 10, got nan"]),
    "steps_huge": (["--task", "faces", "--steps", "10000000000"], ["--steps must be > 0 and <= 100000, got 10000000000"]),
    "batch_size_zero": (["--task", "faces", "--batch-size", "0"], ["--batch-size must be in 1..65536, got 0"]),
    "input_size_zero": (["--task", "faces", "--input-size", "0"], ["--input-size must be in 16..4096, got 0"]),
    "input_size_negative": (["--task", "faces", "--input-size", "-5"], ["--input-size must be in 16..4096, got -5"]),
    "seed_beyond_64_bits": (["--task", "faces", "--seed", str(2**64)], [f"--seed must be in 0..{2**63 - 1}, got {2**64}"]),
    "seed_negative": (["--task", "faces", "--seed", "-1"], ["--seed must be in 0..", "got -1"]),
    "device_unknown": (["--task", "faces", "--device", "tpu"], ["--device 'tpu' is not a device name", "cpu, cuda or cuda:N"]),
}
if not __import__("torch").cuda.is_available():
    RUN_CASES["device_cuda_without_gpu"] = (["--task", "faces", "--device", "cuda"], ["--device 'cuda': no CUDA GPU is visible"])


@pytest.mark.parametrize("case", list(RUN_CASES))
def test_h2t_run_refuses(tmp_path, case):
    args, fragments = RUN_CASES[case]
    cache = tmp_path / "cache"
    # the bad flag comes last, so it overrides the valid defaults in RUN
    proc, elapsed = h2t("run", "--cache", str(cache), "--method", "linear", *RUN, *args)
    assert_refused(proc, elapsed, *fragments)
    assert not cache.exists()  # not even an empty cache folder


@pytest.mark.parametrize("case", IMAGE_FAULTS)
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
    "unknown_task": (_with(tasks=["faces", "no_such_task"]), ["tasks", "unknown task 'no_such_task'", "choose one of: ", "faces", "imagefolder:PATH"]),
    "unknown_backbone": (_with(backbones=["no_such_net"]), ["backbones.0.name", "unknown backbone 'no_such_net'", "choose one of: efficientnet_lite0", "any timm model name"]),
    "unknown_method": (_with(methods={"no_such_method": {"lr": [0.1], "steps": [5]}}), ["methods", "unknown method 'no_such_method'", "choose one of: linear", "finetune"]),
    "lr_zero": (_grid(lr=[0.1, 0.0]), ["methods.head2toe.lr", "must be > 0", "[0.0]"]),
    "steps_zero": (_grid(steps=[0]), ["methods.head2toe.steps", "must be > 0 and <= 100000, got [0]"]),
    "keep_fraction_zero": (_grid(keep_fractions=[0.0]), ["methods.head2toe.keep_fractions", "(0, 1]"]),
    "keep_fraction_above_one": (_grid(keep_fractions=[0.1, 1.5]), ["methods.head2toe.keep_fractions", "(0, 1]", "[1.5]"]),
    "target_size_zero": (_grid(target_size=[0]), ["methods.head2toe.target_size", "must be > 0, got [0]"]),
    "unknown_field": (_with(foldz=[0]), ["foldz", "Extra inputs are not permitted"]),
    "lr_huge": (_grid(lr=[0.1, 1e308]), ["methods.head2toe.lr", "must be > 0 and <= 10", "[1e+308]"]),
    "steps_huge": (_grid(steps=[10_000_000_000]), ["methods.head2toe.steps", "<= 100000", "[10000000000]"]),
    "seed_beyond_64_bits": (_with(seeds=[0, 2**64]), ["seeds", f"must be in 0..{2**63 - 1}, got [{2**64}]"]),
    "input_size_zero": (_with(backbones=[{"name": "efficientnet_lite0", "input_size": 0}]), ["backbones.0.input_size", "greater than 0"]),
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


@pytest.mark.parametrize("case", ["missing", "empty", "one_class", "unreadable", "truncated_jpeg", "empty_class"])
def test_h2t_sweep_refuses_bad_imagefolder(tmp_path, case):
    task, fragment = make_folder(tmp_path, case)
    proc, elapsed, out = sweep(tmp_path, yaml.safe_dump(_with(tasks=[task])))
    assert_refused(proc, elapsed, "tasks", fragment)
    assert_nothing_started(tmp_path, out)


def test_h2t_sweep_refuses_duplicated_yaml_key(tmp_path):
    text = yaml.safe_dump(TINY, sort_keys=False) + "tasks: [digits]\n"  # plain YAML would keep the last
    lines = text.splitlines()
    first = next(i for i, ln in enumerate(lines, 1) if ln.startswith("tasks:"))
    proc, elapsed, out = sweep(tmp_path, text)
    assert_refused(proc, elapsed, f"malformed YAML at line {len(lines)}, column 1", f"duplicated key 'tasks' (first at line {first})",
                   str(tmp_path / "bad.yaml"))
    assert_nothing_started(tmp_path, out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_h2t_sweep_refuses_unreachable_tracking_server(tmp_path):
    """Nothing listens on the port: one line within seconds (it used to print nothing for minutes)."""
    path, out = tmp_path / "ok.yaml", tmp_path / "out"
    path.write_text(yaml.safe_dump(TINY))
    uri = f"http://127.0.0.1:{free_port()}"
    proc, elapsed = h2t("sweep", str(path), "--out", str(out), "--tracking-uri", uri, "--cache", str(tmp_path / "cache"))
    assert_refused(proc, elapsed, f"tracking server {uri} did not answer within 5 s", "Connection refused")
    assert_nothing_started(tmp_path, out)


@contextmanager
def silent_server():
    """A TCP server on 127.0.0.1 that accepts connections and never answers: what a blackholed
    S3 endpoint looks like to a client (pyarrow's defaults wait ~200 s on it)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        t.join()
        for c in held:
            c.close()
        sock.close()


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_unanswering_s3_cache_is_refused_in_seconds(tmp_path, command):
    with silent_server() as port:
        uri = f"s3://bucket/features?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
        if command == "run":
            proc, elapsed = h2t("run", "--task", "faces", "--cache", uri, "--method", "linear", *RUN)
        else:
            (tmp_path / "s3.yaml").write_text(yaml.safe_dump({**TINY, "cache": uri}))
            proc, elapsed = h2t("sweep", str(tmp_path / "s3.yaml"), "--out", str(tmp_path / "out"))
            assert not (tmp_path / "out").exists()
    assert_refused(proc, elapsed, f"cannot reach feature cache {uri!r}", "Timeout was reached", "pass --cache with a local folder")


@contextmanager
def read_only(folder: Path):
    """`folder` unwritable even for root (chattr +i), or the test is skipped where that is not allowed."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("cannot make a folder read-only here (chattr +i refused)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_read_only_cache_with_a_damaged_file_is_refused_before_any_forward_pass(tmp_path):
    """One damaged file in a cache that cannot be written: refused up front (it used to run 20 s
    of forward passes, then fail on save with a PermissionError traceback)."""
    from head2toe.backbones import create_backbone
    from head2toe.provider import feature_key
    from head2toe.tasks import get_task

    cache = tmp_path / "cache"
    cached_faces(cache, "none")
    files = sorted(cache.glob("*.parquet"))
    test_key = feature_key(get_task("faces"), "test", create_backbone("efficientnet_lite0", weights="random", input_size=64), 16, "float16")
    damaged = cache / f"{test_key}.parquet"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 3] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with read_only(cache):
        proc, elapsed = h2t("run", "--task", "faces", "--cache", str(cache), "--method", "linear", *RUN)
        assert_refused(proc, elapsed, f"feature cache {cache} is not writable", "1 of 2 needed feature file(s) must be written",
                       f"{damaged} is damaged", "pass --cache with a writable folder")
        proc, elapsed = h2t("extract", "--task", "faces", "--weights", "random", "--input-size", "64", "--target-size", "16",
                            "--cache", str(cache))
        assert_refused(proc, elapsed, f"feature cache {cache} is not writable", "1 file(s) must be written", str(damaged))
        proc, _ = h2t("run", "--task", "faces", "--cache", str(cache), "--method", "linear", *RUN, "--fold", "0", "--json")
        assert proc.returncode == 0, proc.stderr[-2000:]  # a read-only cache that holds what is needed (train) is fine
        assert json.loads(proc.stdout)["forward_passes"] == 0
    assert sorted(cache.glob("*.parquet")) == files
