"""Task registry: offline tasks (no download), VTAB-1k through tfds, and `imagefolder:PATH`."""
from head2toe.tasks import offline as _offline  # noqa: F401  (registers the offline tasks)
from head2toe.tasks import vtab as _vtab  # noqa: F401  (registers the 19 VTAB-1k tasks)
from head2toe.tasks.base import SPLITS, ImageSplit, Task, get_task, register_task, task_names

__all__ = ["SPLITS", "ImageSplit", "Task", "get_task", "register_task", "task_names"]
