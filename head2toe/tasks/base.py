"""The task interface and registry: a task yields labelled images for `train` and `test`.

`train` is the set that cross-validation cuts into folds (VTAB's train800val200: 1000
images); `test` is scored once, by the final run.
"""
from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from head2toe.errors import H2TError

SPLITS = ("train", "test")


@dataclass
class ImageSplit:
    """Images of one split as uint8 HWC arrays (one stacked array or any sequence), and labels."""

    images: Sequence[np.ndarray] | np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)


class Task(ABC):
    """A classification task. Subclasses set the class attributes and implement `load`."""

    name: str
    num_classes: int
    group: str = "Offline"
    source: str = "offline"
    description: str = ""
    # The split cross-validation cuts into folds; the final run trains on "train". They differ
    # where a protocol validates on other images than it finally trains on.
    cv_split: str = "train"

    @abstractmethod
    def split_sizes(self) -> dict[str, int]:
        """Number of examples per split, known without loading images."""

    @abstractmethod
    def load(self, split: str) -> ImageSplit:
        """All examples of `split` ("train" or "test")."""

    def definition(self) -> dict:
        """Everything that decides this task's images and labels (feeds the cache key)."""
        return {"name": self.name, "num_classes": self.num_classes, "sizes": self.split_sizes()}

    def fingerprint(self) -> str:
        blob = json.dumps(self.definition(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def available(self) -> bool:
        """Whether the data is present locally (offline tasks always are)."""
        return True

    def describe(self) -> dict:
        return {
            "name": self.name,
            "group": self.group,
            "source": self.source,
            "num_classes": self.num_classes,
            "splits": self.split_sizes(),
            "available": self.available(),
            "description": self.description,
        }

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise H2TError(f"unknown split {split!r} for task {self.name!r}; use one of {SPLITS}")


_REGISTRY: dict[str, Callable[[], Task]] = {}


def register_task(name: str, factory: Callable[[], Task]) -> None:
    if name in _REGISTRY:
        raise ValueError(f"task {name!r} is already registered")
    _REGISTRY[name] = factory


def task_names() -> list[str]:
    return list(_REGISTRY)


def get_task(name: str) -> Task:
    """A registered task, or `imagefolder:PATH` for a user's own folder of images."""
    if name.startswith("imagefolder:"):
        from head2toe.tasks.imagefolder import ImageFolderTask

        return ImageFolderTask(name.split(":", 1)[1])
    if name not in _REGISTRY:
        raise H2TError(
            f"unknown task {name!r}; choose one of: {', '.join(_REGISTRY)} (see `h2t tasks`), "
            "or imagefolder:PATH for your own images"
        )
    return _REGISTRY[name]()
