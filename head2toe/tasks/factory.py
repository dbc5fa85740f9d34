"""The task factory, after timm's `_factory.py`: a registered name, or a `prefix:ARG` name
that builds a task from an argument (`imagefolder:PATH`, a user's own folder of images).
Importing it registers every built-in task (offline and VTAB-1k)."""
from __future__ import annotations

from typing import Callable

from head2toe.tasks import offline as _offline  # noqa: F401  (registers the offline tasks)
from head2toe.tasks import vtab as _vtab  # noqa: F401  (registers the 19 VTAB-1k tasks)
from head2toe.tasks.base import TASKS, Task
from head2toe.tasks.imagefolder import ImageFolderTask

PREFIXES: dict[str, Callable[[str], Task]] = {"imagefolder": ImageFolderTask}


def task_names() -> list[str]:
    return list(TASKS)


def get_task(name: str) -> Task:
    """A registered task, or `imagefolder:PATH` for a user's own folder of images."""
    prefix, sep, arg = name.partition(":")
    if sep and prefix in PREFIXES:
        return PREFIXES[prefix](arg)
    return TASKS[name]()


def check_task(name: str) -> str:
    """`name` when `get_task` takes it: a registered name is only looked up (nothing is read);
    a prefixed one is built, so a user's folder is checked now."""
    prefix, sep, _ = name.partition(":")
    if sep and prefix in PREFIXES:
        get_task(name)
    elif name not in TASKS:
        raise TASKS.unknown(name)
    return name
