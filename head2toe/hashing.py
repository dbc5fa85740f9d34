"""The one content hash of the project: a short hex digest of a JSON-able value, stable
across runs and machines (keys sorted, anything else by its string). Cache keys, task
fingerprints, trial keys and sweep ids are all made by `short_hash`."""
from __future__ import annotations

import hashlib
import json
from typing import Any


def short_hash(value: Any, n: int) -> str:
    """The first `n` hex digits of sha256 over `value` as canonical JSON (a str: its bytes)."""
    blob = value.encode() if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]
