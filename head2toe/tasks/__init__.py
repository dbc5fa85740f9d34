"""Tasks: offline tasks (no download), VTAB-1k through tfds, and `imagefolder:PATH`.

`get_task(name)` is the factory; `TASKS` the registry (`register_task` adds one)."""
from head2toe.tasks.base import SPLITS, TASKS, ImageSplit, Task, register_task
from head2toe.tasks.factory import PREFIXES, check_task, get_task, task_names

__all__ = ["PREFIXES", "SPLITS", "TASKS", "check_task", "ImageSplit", "Task", "get_task", "register_task", "task_names"]
