"""The task interface and its registry: a task yields labelled images for `train` and `test`.

`train` is the set that cross-validation cuts into folds (VTAB's train800val200: 1000
images); `test` is scored once, by the final run.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from head2toe.hashing import short_hash
from head2toe.registry import Registry, check_choice

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
        return short_hash(self.definition(), 16)

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
        check_choice("split", split, SPLITS, f" (task {self.name!r})")


TASKS: Registry[Callable[[], Task]] = Registry(
    "task", hint=" (see `h2t tasks`), or imagefolder:PATH for your own images")


def register_task(name: str, factory: Callable[[], Task]) -> None:
    """Register a task under `name`; `factory` builds it (cheaply: images load on `load`)."""
    TASKS.register(name, factory)
