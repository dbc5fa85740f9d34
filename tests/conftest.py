"""Shared fixtures: small data, tiny inputs, one thread budget for a 2-core machine."""
from __future__ import annotations

import os
import tempfile

import pytest
import torch

os.environ.setdefault("H2T_NO_REEXEC", "1")  # subprocess jobs inherit the allocator `make test` chose
# One feature cache per test session, never the user's: tests start from an empty cache.
os.environ.setdefault("H2T_CACHE", tempfile.mkdtemp(prefix="h2t-test-cache-"))
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def lite0_64():
    """The embedded pretrained EfficientNet-Lite0 at 64 px (fast, still real transfer)."""
    from head2toe.backbones import create_backbone

    return create_backbone("efficientnet_lite0", input_size=64)


@pytest.fixture(scope="module")
def local_ray():
    """A fresh local Ray for the module (a module may override it, e.g. with worker env vars)."""
    from sweep_helpers import local_ray as session

    with session():
        yield
