"""Head2Toe (Evci et al., ICML 2022) as a library, in PyTorch and NumPy: backbones with named
layer taps, pooling and normalisation, probe training, feature scoring and selection, the
feature and image methods, tasks and their data sources, the feature cache and its format,
and the VTAB-1k protocol (5-fold CV, then test).

May import: the standard library, NumPy, PyTorch, timm, pyarrow and the data libraries;
never Ray or MLflow, nor this project's orchestrator, jobs or analysis packages (they build
on this one; tests/test_imports.py checks the import graph and that it has no cycle).

The names below are the API a notebook imports (`from head2toe import get_task, ...`); each
loads its module on first use, so `import head2toe.errors` (or the allocator every `h2t`
command starts with) does not pull in PyTorch.
"""
from __future__ import annotations

import importlib
from typing import Any

# module -> the names it gives the API (tests/test_imports.py counts these as imports)
_API = {
    "head2toe.backbones": ("BACKBONES", "Backbone", "create_backbone"),
    "head2toe.cache": ("FeatureCache", "open_cache"),
    "head2toe.errors": ("H2TError",),
    "head2toe.evaluate": ("cross_validate", "final_run", "run_protocol"),
    "head2toe.features": ("LayerFeatures",),
    "head2toe.hparams": ("HParams",),
    "head2toe.image_methods": ("IMAGE_METHODS", "ImageHParams", "TrainConfig", "run_image_method"),
    "head2toe.methods": ("METHODS", "FeatureMethod", "get_method"),
    "head2toe.protocol": ("N_FOLDS", "cv_folds", "expand_grid"),
    "head2toe.provider": ("FeatureProvider",),
    "head2toe.registry": ("Registry",),
    "head2toe.tasks": ("TASKS", "Task", "get_task", "task_names"),
}
_HOME = {name: module for module, names in _API.items() for name in names}
__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'head2toe' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
