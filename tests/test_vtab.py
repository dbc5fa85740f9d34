"""VTAB-1k through tensorflow-datasets: split and label rules (pure), every task through the
loader with tfds mock data, the real ArrayRecord path against tfds' own split slicing,
fast failure when data is missing, and `h2t tasks --json`."""
from __future__ import annotations

import json
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from head2toe.backbones import BACKBONES, get_spec
from head2toe.errors import H2TError
from head2toe.preprocess import to_input
from head2toe.protocol import cv_folds
from head2toe.tasks import get_task
from head2toe.tasks.vtab import SPECS, Binned, Field, NearestDepthBin, ObjectCount, parse_split, vtab_task
from vtab_fixtures import png, prepare_fake, write_metadata

tfds = pytest.importorskip("tensorflow_datasets")

CLASSES = {"caltech101": 102, "cifar100": 100, "dtd": 47, "flowers102": 102, "pets": 37, "svhn": 10, "sun397": 397,
           "camelyon": 2, "eurosat": 10, "resisc45": 45, "retinopathy": 5, "clevr_count": 8, "clevr_dist": 6, "dmlab": 6,
           "kitti_dist": 4, "dsprites_loc": 16, "dsprites_ori": 16, "smallnorb_azim": 18, "smallnorb_elev": 9}
GROUPS = {"Natural": 7, "Specialized": 4, "Structured": 8}

# task -> (train800val200, test) as task_adaptation defines them on the tfds catalogue sizes, and VTAB's test size
CATALOGUE = {
    "caltech101": ("train[:800]+train[2754:2954]", "test", 6084),
    "cifar100": ("train[:800]+train[45000:45200]", "test", 10000),
    "dtd": ("train[:800]+validation[:200]", "test", 1880),
    "flowers102": ("train[:800]+validation[:200]", "test", 6149),
    "pets": ("train[:800]+train[2944:3144]", "test", 3669),
    "svhn": ("train[:800]+train[65931:66131]", "test", 26032),
    "sun397": ("train[:800]+validation[:200]", "test", 21750),
    "camelyon": ("train[:800]+validation[:200]", "test", 32768),
    "eurosat": ("train[:800]+train[16200:16400]", "train[21600:]", 5400),
    "resisc45": ("train[:800]+train[18900:19100]", "train[25200:]", 6300),
    "retinopathy": ("train[:800]+validation[:200]", "test", 42670),
    "clevr_count": ("train[:800]+train[63000:63200]", "validation", 15000),
    "clevr_dist": ("train[:800]+train[63000:63200]", "validation", 15000),
    "dmlab": ("train[:800]+validation[:200]", "test", 22735),
    "kitti_dist": ("train[:800]+validation[:200]", "test", 711),
    "dsprites_loc": ("train[:800]+train[589824:590024]", "train[663552:]", 73728),
    "dsprites_ori": ("train[:800]+train[589824:590024]", "train[663552:]", 73728),
    "smallnorb_azim": ("train[:800]+test[:200]", "test[12150:]", 12150),
    "smallnorb_elev": ("train[:800]+test[:200]", "test[12150:]", 12150),
}
# small split sizes for the mock folders, large enough for every VTAB rule
MOCK_COUNTS = {"train": 2000, "validation": 200, "test": 400, "extra": 10}


def test_registry_names_groups_and_classes():
    assert {n: s.num_classes for n, s in SPECS.items()} == CLASSES
    assert all(get_task(n).source == "tfds" and get_task(n).num_classes == c for n, c in CLASSES.items())
    for group, n in GROUPS.items():
        assert sum(s.group == group for s in SPECS.values()) == n


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_split_rules_follow_task_adaptation(name, tmp_path):
    task = vtab_task(name, tmp_path)  # nothing prepared: the tfds catalogue sizes decide
    train, test, n_test = CATALOGUE[name]
    assert task.split_specs() == {"train": train, "test": test, "train1000": "train[:1000]"}
    assert task.split_sizes() == {"train": 1000, "test": n_test, "train1000": 1000}
    assert task.cv_split == "train1000"  # the reference's folds: the raw tfds train[:1000]
    counts = task.spec.dataset.counts
    assert parse_split(train, counts)[0] == ("train", 0, 800)
    assert sum(b - a for _, a, b in parse_split(train, counts)) == 1000
    folds = cv_folds(1000)
    assert [(len(tr), len(va)) for tr, va in folds] == [(800, 200)] * 5
    assert folds[4][1].tolist() == list(range(800, 1000))  # fold 4 validates on VTAB's own val200


def test_parse_split_checks_ranges():
    assert parse_split("train[:800]+validation[:200]", {"train": 900, "validation": 300}) == [("train", 0, 800), ("validation", 0, 200)]
    assert parse_split("test[50:]", {"test": 60}) == [("test", 50, 60)]
    with pytest.raises(H2TError, match="out of range.*has 100"):
        parse_split("train[:800]", {"train": 100})
    with pytest.raises(H2TError, match="'validation' is not in the prepared data"):
        parse_split("validation[:200]", {"train": 1000})


def test_label_rules():
    objects = lambda n: {"size": np.zeros(n, np.int64)}
    assert [ObjectCount()({"objects": objects(n)}) for n in (3, 10)] == [0, 7]
    clevr = NearestDepthBin("pixel_coords", (0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0))
    depths = {7.9: 0, 8.0: 0, 8.2: 1, 9.2: 3, 9.9: 4, 10.5: 5}
    for d, want in depths.items():
        coords = np.array([[1.0, 1.0, d], [2.0, 2.0, 50.0]], np.float32)
        assert clevr({"objects": {"pixel_coords": coords}}) == want, d
    kitti = NearestDepthBin("location", (-100.0, 8.0, 20.0, 999.0), max_type=3, missing=1000.0)
    scene = lambda types, z: {"objects": {"type": np.array(types), "location": np.array([[0, 0, v] for v in z], np.float32)}}
    assert kitti(scene([0, 3], [5.0, 1.0])) == 0  # the pedestrian (type 3) closer than the car does not count
    assert kitti(scene([1], [12.0])) == 1 and kitti(scene([2], [30.0])) == 2
    assert kitti(scene([3, 4], [5.0, 6.0])) == 3 and kitti(scene([], [])) == 3  # no vehicle
    loc, ori = Binned("label_x_position", 32), Binned("label_orientation", 40)
    assert [loc({"label_x_position": v}) for v in (0, 1, 2, 31)] == [0, 0, 1, 15]
    assert [ori({"label_orientation": v}) for v in (0, 2, 3, 5, 39)] == [0, 0, 1, 2, 15]
    assert Field("label_azimuth")({"label_azimuth": np.int64(17)}) == 17


@pytest.fixture(scope="module")
def mock_dir(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("tfds_mock")
    for ds in {s.dataset.path: s.dataset for s in SPECS.values()}.values():
        write_metadata(ds, where, {s: MOCK_COUNTS[s] for s in ds.counts})
    return where


def _constant_shapes(builder, split, decoders=None, deserialize_method=None, **_):
    """Scenes with a fixed 10 objects. tfds' default mock draws every per-object field's length
    on its own (5-49), so CLEVR/KITTI objects come out ragged and CLEVR counts beyond 3-10."""
    from tensorflow_datasets.testing.mocking import RandomFakeGenerator

    return RandomFakeGenerator(builder.info.features, 5, constant_dynamic_shape=True)


@pytest.mark.parametrize("name", list(CLASSES))
def test_every_task_loads_through_tfds_mock(name, mock_dir):
    task = vtab_task(name, mock_dir)
    assert task.available()
    sizes = task.split_sizes()
    extra = {"as_data_source_fn": _constant_shapes} if name in ("clevr_count", "clevr_dist", "kitti_dist") else {}
    with tfds.testing.mock_data(num_examples=5, **extra):
        train, test = task.load("train"), task.load("test")
        assert len(train) == sizes["train"] == 1000 and len(test) == sizes["test"] > 0
        for split in (train, test):
            assert split.labels.min() >= 0 and split.labels.max() < CLASSES[name]
        folds = cv_folds(len(train))
        assert [(len(tr), len(va)) for tr, va in folds] == [(800, 200)] * 5
        images = train.images[:3] + [test.images[len(test) - 1]]
    for img in images:
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] in (1, 3)
    if task.spec.binary_image:
        assert set(np.unique(images[0])) <= {0, 255}
    for backbone in BACKBONES:
        spec = get_spec(backbone)
        x = to_input(images, spec.input_size, spec.mean, spec.std)
        assert tuple(x.shape) == (4, 3, spec.input_size, spec.input_size) and x.isfinite().all()


def test_definition_names_tfds_version_and_splits(mock_dir, tmp_path):
    prepared, bare = vtab_task("clevr_count", mock_dir), vtab_task("clevr_count", tmp_path)
    d = prepared.definition()
    assert d["tfds"] == {"name": "clevr", "config": None, "version": "3.1.0"}
    assert d["splits"] == {"train": "train[:800]+train[1800:2000]", "test": "validation", "train1000": "train[:1000]"}
    assert d["label"] == {"rule": "ObjectCount", "offset": 3}
    assert prepared.fingerprint() != bare.fingerprint()  # other split sizes -> other split strings -> other key
    assert vtab_task("clevr_dist", mock_dir).fingerprint() != prepared.fingerprint()
    moved = tmp_path / "moved"
    write_metadata(prepared.spec.dataset, moved, {s: MOCK_COUNTS[s] for s in ("train", "validation", "test")})
    assert vtab_task("clevr_count", moved).fingerprint() == prepared.fingerprint()  # where the data lives is no part of it


def _fake_dtd(where: Path) -> None:
    def split(n: int, seed: int):
        def gen():
            rng = np.random.default_rng(seed)
            for i in range(n):
                yield f"{seed}-{i}", {"image": png(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)),
                                      "label": int(rng.integers(47)), "file_name": f"{seed}-{i}.png"}
        return gen

    prepare_fake(SPECS["dtd"].dataset, where, {"train": split(1010, 0), "validation": split(210, 1), "test": split(40, 2)})


def test_real_array_record_matches_tfds_split_slicing(tmp_path):
    _fake_dtd(tmp_path)
    task = vtab_task("dtd", tmp_path)
    assert task.available() and task.split_sizes() == {"train": 1000, "test": 40, "train1000": 1000}
    train = task.load("train")
    oracle = tfds.data_source("dtd:3.0.1", split="train[:800]+validation[:200]", data_dir=str(tmp_path), download=False)
    assert train.labels.tolist() == [int(oracle[i]["label"]) for i in range(1000)]
    for i in (0, 799, 800, 999):
        assert np.array_equal(train.images[i], oracle[i]["image"])
    batches = [train.images[s : s + 64] for s in range(0, 1000, 64)]  # read-ahead path
    assert all(np.array_equal(a, oracle[i]["image"]) for i, a in enumerate(x for b in batches for x in b))
    clone = pickle.loads(pickle.dumps(train.images))
    assert np.array_equal(clone[123], train.images[123])
    assert task.load("test").labels.shape == (40,)
    cv = task.load(task.cv_split)  # the reference's CV images: raw train[:1000], not train800val200
    raw = tfds.data_source("dtd:3.0.1", split="train[:1000]", data_dir=str(tmp_path), download=False)
    assert cv.labels.tolist() == [int(raw[i]["label"]) for i in range(1000)]
    assert np.array_equal(cv.images[900], raw[900]["image"]) and not np.array_equal(cv.images[900], train.images[900])
    assert vtab_task("dtd", tmp_path, cv_split="train").cv_split == "train"
    with pytest.raises(H2TError, match="unknown split 'val'.*train1000"):
        task.load("val")


def test_label_rules_on_every_value_and_edge():
    """Mock examples built so that a wrong rule fails: counts that vary, depths on and just past
    each threshold, every dSprites position and orientation value."""
    sizes = lambda n: {"objects": {"size": np.arange(n) % 3}}
    assert [ObjectCount()(sizes(n)) for n in range(3, 11)] == list(range(8))
    clevr = NearestDepthBin("pixel_coords", (0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0))
    scene = lambda *z: {"objects": {"pixel_coords": np.array([[5.0, 7.0, v] for v in z], np.float32)}}
    # label = largest i with thresholds[i] < nearest depth (task_adaptation: max(where(thrs - dist < 0)))
    edges = {0.5: 0, 8.0: 0, 8.001: 1, 8.5: 1, 8.501: 2, 9.0: 2, 9.001: 3, 9.5: 3, 9.501: 4, 10.0: 4, 10.001: 5, 99.0: 5}
    assert {d: clevr(scene(d, d + 50.0)) for d in edges} == edges
    assert clevr(scene(12.0, 8.2, 30.0)) == 1  # the nearest object decides, wherever it is listed
    kitti = NearestDepthBin("location", (-100.0, 8.0, 20.0, 999.0), max_type=3, missing=1000.0)
    cars = lambda types, z: {"objects": {"type": np.array(types), "location": np.array([[1.0, 2.0, v] for v in z], np.float32)}}
    kitti_edges = {3.0: 0, 8.0: 0, 8.001: 1, 20.0: 1, 20.001: 2, 998.0: 2}
    assert {z: kitti(cars([0], [z])) for z in kitti_edges} == kitti_edges
    assert [kitti(cars([t, 0], [2.0, 30.0])) for t in range(8)] == [0, 0, 0, 2, 2, 2, 2, 2]  # only car, van, truck count
    assert kitti(cars([5, 6], [1.0, 1.0])) == 3  # no vehicle: 1000 -> the last bin
    loc, ori = Binned("label_x_position", 32), Binned("label_orientation", 40)
    assert [loc({"label_x_position": v}) for v in range(32)] == [v // 2 for v in range(32)]
    # 40 orientations into 16 bins of 2.5 values: bin sizes alternate 3, 2, 3, 2, ...
    want = [b for b in range(16) for _ in range(3 if b % 2 == 0 else 2)]
    assert [ori({"label_orientation": v}) for v in range(40)] == want


def test_pets_prefers_a_prepared_3x_folder(tmp_path):
    from head2toe.tasks.vtab import find_prepared

    ds = SPECS["pets"].dataset
    for version in ("3.2.0", "4.0.0"):
        root = tmp_path / ds.path / version
        root.mkdir(parents=True)
        (root / "dataset_info.json").write_text(json.dumps({"splits": [{"name": "train", "shardLengths": ["3680"]}]}))
    assert find_prepared(ds, tmp_path).version == "3.2.0"
    (tmp_path / ds.path / "3.2.0" / "dataset_info.json").unlink()
    assert find_prepared(ds, tmp_path).version == "4.0.0"


def test_tfrecord_only_data_is_reported(tmp_path):
    root = write_metadata(SPECS["dtd"].dataset, tmp_path, {"train": 900, "validation": 300, "test": 10})
    for f in root.glob("*.array_record-*"):
        f.rename(f.with_name(f.name.replace("array_record", "tfrecord")))
    task = vtab_task("dtd", tmp_path)
    assert not task.available()
    with pytest.raises(H2TError, match="no array_record files .*python -m jobs.vtab_prepare --tasks dtd"):
        task.load("train")


def test_missing_dataset_fails_fast_with_the_prepare_command(tmp_path):
    start = time.perf_counter()
    with pytest.raises(H2TError, match=f"python -m jobs.vtab_prepare --tasks retinopathy --data-dir {tmp_path}.*manual download"):
        vtab_task("retinopathy", tmp_path).load("train")
    assert time.perf_counter() - start < 1.0


def test_h2t_run_on_missing_data_exits_2_in_seconds(tmp_path):
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "jobs.run", "--task", "clevr_count", "--data-dir", str(tmp_path), "--json"],
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[1])
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr
    assert elapsed < 10, elapsed
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"python -m jobs.vtab_prepare --tasks clevr_count --data-dir {tmp_path}" in lines[0]
    assert proc.stdout == ""


def test_h2t_tasks_json(mock_dir, capsys, monkeypatch):
    from jobs.cli import main

    monkeypatch.setenv("TFDS_DATA_DIR", "")  # restored afterwards: --data-dir sets it

    assert main(["tasks", "--json", "--data-dir", str(mock_dir)]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert {n: rows[n]["num_classes"] for n in CLASSES} == CLASSES
    for n in CLASSES:
        r = rows[n]
        assert r["group"] == SPECS[n].group and r["available"] is True and r["splits"]["train"] == 1000
        assert r["source"] == "tfds" and r["tfds"].startswith(SPECS[n].dataset.path + ":")


def test_vtab_prepare_dry_run_reports_state(mock_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", "")
    from jobs.vtab_prepare import configure, main
    from jobs._entry import OneLineParser

    p = OneLineParser()
    configure(p)
    assert main(p.parse_args(["--tasks", "clevr_count,clevr_dist", "resisc45", "--data-dir", str(mock_dir), "--dry-run"])) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "clevr:3.1.0 (clevr_count, clevr_dist): ready"
    assert out[1].startswith("resisc45:3.0.0 (resisc45): ready  [needs a manual download")
    assert main(p.parse_args(["--tasks", "all", "--data-dir", str(tmp_path), "--dry-run"])) == 0
    assert len(capsys.readouterr().out.splitlines()) == 16  # datasets behind the 19 tasks, all missing
    with pytest.raises(H2TError, match=r"^unknown VTAB task 'clevr' \(did you mean 'clevr_dist'\?\); choose one of: caltech101, .* \(or all\)$"):
        main(p.parse_args(["--tasks", "clevr", "--dry-run"]))


def test_catalog_reads_groups_and_classes_from_the_task_registry_and_names_only_registered_tasks():
    """analysis.catalog keeps only the paper's labels and order; what a task is comes from the
    registry, and every task the published tables (and the cost table) name is registered."""
    from analysis.catalog import VTAB_GROUPS, VTAB_TASKS, num_classes, task_group
    from analysis.published import published_cost, published_table
    from head2toe.tasks import TASKS

    assert set(VTAB_TASKS) == set(SPECS) and set(VTAB_TASKS) <= set(TASKS)
    assert VTAB_GROUPS == tuple(GROUPS)
    for name in VTAB_TASKS:
        task = get_task(name)
        assert (task_group(name), num_classes(name)) == (task.group, task.num_classes) == (SPECS[name].group, CLASSES[name])
    for backbone in ("resnet50", "vit_b16"):
        named = [c for c in published_table(backbone).columns if c != "mean (%)" and not c.lower().startswith("mean")]
        assert named == list(VTAB_TASKS)  # the paper's order, every one registered
    cost = published_cost().set_index("task").drop(index="average")
    assert set(cost.index) <= set(TASKS)
    assert {t: num_classes(t) for t in cost.index} == cost["num_classes"].astype(int).to_dict()
