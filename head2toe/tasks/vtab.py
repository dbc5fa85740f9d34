"""VTAB-1k: the 19 tasks of the benchmark, read from data prepared by tensorflow-datasets.

Splits, label mappings and tfds versions follow google-research/task_adaptation
(`data/*.py`): `train` is its `train800val200` (800 training images, then the 200
validation images) and `test` its `test`. `train1000` is the raw tfds `train[:1000]`, the
images the reference Head2Toe code cuts its 5 CV folds from (input_pipeline.py:
`train[:200k]+train[200k+200:1000]` / `train[200k:200k+200]`); it is each task's `cv_split`,
while the final run trains on `train` (docs/paper_setup.md).
Data is read through `tfds.data_source` (ArrayRecord random access), so TensorFlow is not
needed; nothing here downloads: a missing dataset fails at once with the command that
prepares it (`python -m jobs.vtab_prepare`).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np

from head2toe.errors import H2TError
from head2toe.registry import check_choice
from head2toe.tasks.base import ImageSplit, Task, register_task
from head2toe.tasks.tfds_records import LazyRecords

TRAIN_SIZE = 1000
CV_SPLIT = "train1000"
VTAB_SPLITS = ("train", "test", CV_SPLIT)


def data_dir() -> Path:
    """Where prepared tfds data lives: $TFDS_DATA_DIR, else tfds' default ~/tensorflow_datasets."""
    return Path(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser()


def set_data_dir(path: str | os.PathLike) -> None:
    """Point VTAB tasks at `path`. Set through the environment so that worker processes
    started afterwards (Ray, subprocess jobs) read the same folder."""
    os.environ["TFDS_DATA_DIR"] = str(Path(path).expanduser())


def prepare_command(task: str, where: Path | None = None) -> str:
    return f"python -m jobs.vtab_prepare --tasks {task} --data-dir {where or data_dir()}"


# ---------------------------------------------------------------- split rules (pure)

SplitRule = Callable[[dict[str, int]], dict[str, str]]


def val_from_validation(counts: dict[str, int]) -> dict[str, str]:
    """Datasets with a validation split: VTAB takes its first 200."""
    return {"train": "train[:800]+validation[:200]", "test": "test"}


def val_from_train(percent: int, test: str = "test") -> SplitRule:
    """Datasets without one: VTAB's val starts after the first `percent`% of train."""
    def rule(counts: dict[str, int]) -> dict[str, str]:
        k = percent * counts["train"] // 100
        return {"train": f"train[:800]+train[{k}:{k + 200}]", "test": test}
    return rule


def carved_from_train(train_percent: int, val_percent: int) -> SplitRule:
    """Datasets with only `train`: VTAB cuts train / val / test from it by percentages."""
    def rule(counts: dict[str, int]) -> dict[str, str]:
        n = counts["train"]
        k, v = train_percent * n // 100, val_percent * n // 100
        return {"train": f"train[:800]+train[{k}:{k + 200}]", "test": f"train[{k + v}:]"}
    return rule


def val_from_test(val_percent: int) -> SplitRule:
    """smallNORB: val is the first half of tfds' test, VTAB's test the second half."""
    def rule(counts: dict[str, int]) -> dict[str, str]:
        v = val_percent * counts["test"] // 100
        return {"train": "train[:800]+test[:200]", "test": f"test[{v}:]"}
    return rule


_PART = re.compile(r"^(\w+)(?:\[(\d*):(\d*)\])?$")


def parse_split(spec: str, counts: dict[str, int]) -> list[tuple[str, int, int]]:
    """'train[:800]+validation[:200]' -> [('train', 0, 800), ('validation', 0, 200)],
    checked against the tfds split sizes in `counts`."""
    parts = []
    for text in spec.split("+"):
        m = _PART.match(text.strip())
        if not m:
            raise ValueError(f"bad split spec {text!r}")
        name, a, b = m.groups()
        if name not in counts:
            raise H2TError(f"split {name!r} is not in the prepared data (has {sorted(counts)})")
        start, stop = int(a or 0), int(b) if b else counts[name]
        if not 0 <= start < stop <= counts[name]:
            raise H2TError(f"{text} is out of range: the prepared {name!r} split has {counts[name]} examples")
        parts.append((name, start, stop))
    return parts


# ---------------------------------------------------------------- label rules (pure)

@dataclass(frozen=True)
class Field:
    """The label as stored (a tfds ClassLabel)."""

    key: str = "label"

    def __call__(self, ex: dict) -> int:
        return int(ex[self.key])


@dataclass(frozen=True)
class Binned:
    """dSprites: group `n_values` consecutive values into `n_bins` classes (floor(v / (n_values / n_bins)))."""

    key: str
    n_values: int
    n_bins: int = 16

    def __call__(self, ex: dict) -> int:
        return int(np.floor(np.float32(ex[self.key]) / np.float32(self.n_values / self.n_bins)))


@dataclass(frozen=True)
class ObjectCount:
    """CLEVR count_all: number of objects minus 3 (scenes hold 3-10 objects)."""

    offset: int = 3

    def __call__(self, ex: dict) -> int:
        return len(ex["objects"]["size"]) - self.offset


@dataclass(frozen=True)
class NearestDepthBin:
    """Bin of the nearest object's depth: the largest i with thresholds[i] < depth.

    CLEVR closest_object_distance reads pixel_coords[:, 2]; KITTI closest_vehicle_distance
    reads location[:, 2] of cars, vans and trucks (type < 3), 'no vehicle' counting as `missing`.
    """

    coords: str
    thresholds: tuple[float, ...]
    max_type: int | None = None
    missing: float | None = None

    def __call__(self, ex: dict) -> int:
        objects = ex["objects"]
        depth = np.asarray(objects[self.coords], np.float32).reshape(-1, 3)[:, 2]
        if self.max_type is not None:
            depth = depth[np.asarray(objects["type"]).reshape(-1) < self.max_type]
        if self.missing is not None:
            depth = np.append(depth, np.float32(self.missing))
        return int(np.searchsorted(np.asarray(self.thresholds, np.float32), depth.min(), side="left")) - 1


# ---------------------------------------------------------------- the 19 tasks

@dataclass(frozen=True)
class Dataset:
    """A tfds dataset as VTAB pins it. `accept` is task_adaptation's version pattern;
    `version` the one tfds>=4.9 prepares; `counts` the catalogue split sizes, used only
    until the data is prepared (then its dataset_info.json decides)."""

    name: str
    config: str | None
    version: str
    accept: tuple[str, ...]
    counts: dict[str, int]
    note: str = ""

    @property
    def path(self) -> str:
        return f"{self.name}/{self.config}" if self.config else self.name


@dataclass(frozen=True)
class VtabSpec:
    name: str
    group: str
    num_classes: int
    dataset: Dataset
    split_rule: SplitRule
    label: Callable[[dict], int] = field(default_factory=Field)
    binary_image: bool = False  # dSprites stores 0/1 pixels; VTAB multiplies by 255
    description: str = ""


_MANUAL = "needs a manual download first (see docs/vtab.md)"
_DS = {
    "caltech101": Dataset("caltech101", None, "3.0.2", ("3.",), {"train": 3060, "test": 6084}),
    "cifar100": Dataset("cifar100", None, "3.0.2", ("3.",), {"train": 50000, "test": 10000}),
    "dtd": Dataset("dtd", None, "3.0.1", ("3.",), {"train": 1880, "validation": 1880, "test": 1880}),
    "flowers": Dataset("oxford_flowers102", None, "2.1.1", ("2.",), {"train": 1020, "validation": 1020, "test": 6149}),
    "pets": Dataset("oxford_iiit_pet", None, "4.0.0", ("3.", "4."), {"train": 3680, "test": 3669},
                    "VTAB pinned 3.x, which tfds>=4.9 can no longer prepare; 4.0.0 (fixed corrupt images) is used unless 3.x is already prepared"),
    "svhn": Dataset("svhn_cropped", None, "3.1.0", ("3.",), {"train": 73257, "test": 26032, "extra": 531131}),
    "sun397": Dataset("sun397", "tfds", "4.0.0", ("4.",), {"train": 76128, "validation": 10875, "test": 21750}),
    "camelyon": Dataset("patch_camelyon", None, "2.0.0", ("2.",), {"train": 262144, "validation": 32768, "test": 32768}),
    "eurosat": Dataset("eurosat", "rgb", "2.0.0", ("2.",), {"train": 27000}),
    "resisc45": Dataset("resisc45", None, "3.0.0", ("3.",), {"train": 31500}, _MANUAL),
    "retinopathy": Dataset("diabetic_retinopathy_detection", "btgraham-300", "3.0.0", ("3.",),
                           {"train": 35126, "validation": 10906, "test": 42670}, _MANUAL + "; btgraham-300 preprocessing runs during prepare"),
    "clevr": Dataset("clevr", None, "3.1.0", ("3.",), {"train": 70000, "validation": 15000, "test": 15000}),
    "dmlab": Dataset("dmlab", None, "2.0.1", ("2.0.1",), {"train": 65550, "validation": 22628, "test": 22735}),
    "kitti": Dataset("kitti", None, "3.3.0", ("3.",), {"train": 6347, "validation": 423, "test": 711},
                     "VTAB pinned 3.1.0; its authors confirm later 3.x minor versions hold the same data"),
    "dsprites": Dataset("dsprites", None, "2.0.0", ("2.",), {"train": 737280}),
    "smallnorb": Dataset("smallnorb", None, "2.0.0", ("2.",), {"train": 24300, "test": 24300}),
}

SPECS: dict[str, VtabSpec] = {s.name: s for s in [
    VtabSpec("caltech101", "Natural", 102, _DS["caltech101"], val_from_train(90), description="Caltech-101 objects"),
    VtabSpec("cifar100", "Natural", 100, _DS["cifar100"], val_from_train(90), description="CIFAR-100"),
    VtabSpec("dtd", "Natural", 47, _DS["dtd"], val_from_validation, description="Describable Textures"),
    VtabSpec("flowers102", "Natural", 102, _DS["flowers"], val_from_validation, description="Oxford Flowers-102"),
    VtabSpec("pets", "Natural", 37, _DS["pets"], val_from_train(80), description="Oxford-IIIT Pets"),
    VtabSpec("svhn", "Natural", 10, _DS["svhn"], val_from_train(90), description="SVHN cropped digits"),
    VtabSpec("sun397", "Natural", 397, _DS["sun397"], val_from_validation, description="SUN397 scenes (tfds config)"),
    VtabSpec("camelyon", "Specialized", 2, _DS["camelyon"], val_from_validation, description="PatchCamelyon metastases"),
    VtabSpec("eurosat", "Specialized", 10, _DS["eurosat"], carved_from_train(60, 20), description="EuroSAT RGB land use"),
    VtabSpec("resisc45", "Specialized", 45, _DS["resisc45"], carved_from_train(60, 20), description="RESISC-45 remote sensing"),
    VtabSpec("retinopathy", "Specialized", 5, _DS["retinopathy"], val_from_validation, description="Diabetic retinopathy (btgraham-300)"),
    VtabSpec("clevr_count", "Structured", 8, _DS["clevr"], val_from_train(90, test="validation"), ObjectCount(),
             description="CLEVR count_all (objects - 3)"),
    VtabSpec("clevr_dist", "Structured", 6, _DS["clevr"], val_from_train(90, test="validation"),
             NearestDepthBin("pixel_coords", (0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0)), description="CLEVR closest_object_distance"),
    VtabSpec("dmlab", "Structured", 6, _DS["dmlab"], val_from_validation, description="DMLab distance x reward"),
    VtabSpec("kitti_dist", "Structured", 4, _DS["kitti"], val_from_validation,
             NearestDepthBin("location", (-100.0, 8.0, 20.0, 999.0), max_type=3, missing=1000.0),
             description="KITTI closest_vehicle_distance"),
    VtabSpec("dsprites_loc", "Structured", 16, _DS["dsprites"], carved_from_train(80, 10), Binned("label_x_position", 32),
             binary_image=True, description="dSprites x position, 16 bins"),
    VtabSpec("dsprites_ori", "Structured", 16, _DS["dsprites"], carved_from_train(80, 10), Binned("label_orientation", 40),
             binary_image=True, description="dSprites orientation, 16 bins"),
    VtabSpec("smallnorb_azim", "Structured", 18, _DS["smallnorb"], val_from_test(50), Field("label_azimuth"),
             description="smallNORB azimuth"),
    VtabSpec("smallnorb_elev", "Structured", 9, _DS["smallnorb"], val_from_test(50), Field("label_elevation"),
             description="smallNORB elevation"),
]}


# ---------------------------------------------------------------- prepared data on disk

@dataclass(frozen=True)
class Prepared:
    """One prepared dataset version folder: its version and split sizes."""

    root: Path
    version: str
    counts: dict[str, int]


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


def find_prepared(ds: Dataset, where: Path) -> Prepared | None:
    """A prepared version folder that holds dataset_info.json: the newest one of the first
    pattern in `ds.accept` that has any (so pets takes a 3.x folder, VTAB's, over 4.x)
    (filesystem only: no tfds import, no network)."""
    base = where / ds.path
    if not base.is_dir():
        return None
    versions = [p.name for p in base.iterdir() if re.fullmatch(r"\d+\.\d+\.\d+", p.name)
                and p.name.startswith(ds.accept) and (p / "dataset_info.json").is_file()]
    if not versions:
        return None
    preferred = next(a for a in ds.accept if any(v.startswith(a) for v in versions))
    version = max((v for v in versions if v.startswith(preferred)), key=_version_key)
    root = base / version
    info = json.loads((root / "dataset_info.json").read_text())
    counts = {s["name"]: sum(int(n) for n in s.get("shardLengths", [])) for s in info.get("splits", [])}
    return Prepared(root, version, counts)


def _has_array_record(root: Path, split: str) -> bool:
    return any(root.glob(f"*-{split}.array_record-*"))


class VtabTask(Task):
    """One VTAB-1k task; data comes from `data_dir()` at construction time."""

    source = "tfds"

    def __init__(self, spec: VtabSpec, where: Path | None = None, cv_split: str = CV_SPLIT):
        if cv_split not in ("train", CV_SPLIT):
            raise H2TError(f"cv_split must be 'train' or {CV_SPLIT!r}, got {cv_split!r}")
        self.spec = spec
        self.cv_split = cv_split  # the reference's folds; "train" cuts them from train800val200
        self.name, self.group, self.num_classes = spec.name, spec.group, spec.num_classes
        self.description = spec.description
        self.where = where or data_dir()
        self._splits: dict[str, ImageSplit] = {}

    @cached_property
    def prepared(self) -> Prepared | None:
        return find_prepared(self.spec.dataset, self.where)

    def available(self) -> bool:
        p = self.prepared
        return p is not None and all(_has_array_record(p.root, s) for s in self._base_splits(p.counts))

    def _counts(self) -> dict[str, int]:
        return self.prepared.counts if self.prepared else self.spec.dataset.counts

    def split_specs(self) -> dict[str, str]:
        """The tfds split strings of `train` (train800val200), `test` and `train1000`."""
        return self._rules(self._counts())

    def _rules(self, counts: dict[str, int]) -> dict[str, str]:
        return {**self.spec.split_rule(counts), CV_SPLIT: f"train[:{TRAIN_SIZE}]"}

    def _base_splits(self, counts: dict[str, int]) -> set[str]:
        return {p.split("[")[0] for s in self._rules(counts).values() for p in s.split("+")}

    def split_sizes(self) -> dict[str, int]:
        counts = self._counts()
        return {k: sum(b - a for _, a, b in parse_split(s, counts)) for k, s in self._rules(counts).items()}

    def _check_split(self, split: str) -> None:
        check_choice("split", split, VTAB_SPLITS, f" (task {self.name!r})")

    def definition(self) -> dict:
        ds = self.spec.dataset
        version = self.prepared.version if self.prepared else ds.version
        label = {"rule": type(self.spec.label).__name__, **asdict(self.spec.label)}
        return {**super().definition(), "tfds": {"name": ds.name, "config": ds.config, "version": version},
                "splits": self.split_specs(), "label": label, "binary_image": self.spec.binary_image}

    def describe(self) -> dict:
        ds = self.spec.dataset
        return {**super().describe(), "tfds": f"{ds.path}:{self.prepared.version if self.prepared else ds.version}",
                "data_dir": str(self.where), "prepare": prepare_command(self.name, self.where), "note": ds.note}

    def require_data(self) -> None:
        """Fail in milliseconds, naming the command that prepares the data; never downloads."""
        ds, p = self.spec.dataset, self.prepared
        note = f" ({ds.note})" if ds.note else ""
        if p is None:
            raise H2TError(
                f"VTAB task {self.name!r}: tfds dataset {ds.path} ({' or '.join(a + 'x' if a.endswith('.') else a for a in ds.accept)}) is not prepared "
                f"under {self.where}; on a machine with internet run: {prepare_command(self.name, self.where)}{note}"
            )
        missing = sorted(s for s in self._base_splits(p.counts) if not _has_array_record(p.root, s))
        if missing:
            raise H2TError(
                f"VTAB task {self.name!r}: {p.root} has no array_record files for split(s) {missing} "
                f"(prepared as tfrecord?); convert or prepare with: {prepare_command(self.name, self.where)}"
            )

    def load(self, split: str) -> ImageSplit:
        self._check_split(split)
        if split not in self._splits:
            self.require_data()
            p = self.prepared
            parts = parse_split(self.split_specs()[split], p.counts)
            records = LazyRecords(str(self.where), f"{self.spec.dataset.path}:{p.version}", parts,
                                  image_fn=_to_255 if self.spec.binary_image else None)
            labels = records.labels(self.spec.label)
            bad = labels[(labels < 0) | (labels >= self.num_classes)]
            if bad.size:
                raise H2TError(f"VTAB task {self.name!r} {split}: label {int(bad[0])} outside 0..{self.num_classes - 1}; "
                               f"the data under {p.root} does not match the VTAB definition")
            self._splits[split] = ImageSplit(records, labels)
        return self._splits[split]


def _to_255(image: np.ndarray) -> np.ndarray:
    return np.minimum(image, 1) * np.uint8(255)


def vtab_task(name: str, where: Path | None = None, cv_split: str = CV_SPLIT) -> VtabTask:
    return VtabTask(SPECS[name], where, cv_split)


for _name in SPECS:
    register_task(_name, lambda n=_name: vtab_task(n))
