"""Every rule a numeric setting must meet, in one place: the library's types (HParams,
ImageHParams), the sweep YAML (orchestrator.config) and the CLI flags (jobs.common) all
check against these `Rule`s before any compute, with the same words, so a typo costs
seconds, not hours."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from head2toe.errors import H2TError

MAX_STEPS = 100_000  # the paper's longest schedule is 10,000 (VTAB fine-tuning); 1e10 would run for days
MAX_LR = 10.0  # Adam/SGD steps far above 1 only diverge
MAX_SEED = 2**63 - 1  # numpy takes any non-negative int, torch.Generator.manual_seed at most 64 bits
MAX_BATCH = 65_536
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 16, 4096  # px


def _real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _whole(v: Any) -> bool:
    return _real(v) and int(v) == v


@dataclass(frozen=True)
class Rule:
    """What one setting accepts: `ok(value)`, said as "<name> must be <accepted>, got <value>"."""

    name: str
    accepted: str
    ok: Callable[[Any], bool]
    integer: bool = False

    def check(self, value: Any, name: str | None = None) -> Any:
        """`value`, or the one-line H2TError naming it (as `name`, e.g. a CLI flag)."""
        if not self.ok(value):
            kind = "an integer " if self.integer and _real(value) and not _whole(value) else ""
            raise H2TError(f"{name or self.name} must be {kind}{self.accepted}, got {value!r}")
        return value

    def bad(self, values: Iterable[Any]) -> list:
        return [v for v in values if not self.ok(v)]


def in_range(name: str, lo: int, hi: int) -> Rule:
    return Rule(name, f"in {lo}..{hi}", lambda v: _whole(v) and lo <= v <= hi, integer=True)


LR = Rule("lr", f"> 0 and <= {MAX_LR:g}", lambda v: _real(v) and 0 < v <= MAX_LR)
STEPS = Rule("steps", f"> 0 and <= {MAX_STEPS}", lambda v: _whole(v) and 0 < v <= MAX_STEPS, integer=True)
COEF = Rule("coef", ">= 0", lambda v: _real(v) and v >= 0)
TARGET_SIZE = Rule("target_size", "> 0", lambda v: _whole(v) and v > 0, integer=True)
KEEP_FRACTION = Rule("keep_fraction", "in (0, 1]", lambda v: _real(v) and 0 < v <= 1)
SEED = in_range("seed", 0, MAX_SEED)
BATCH = in_range("batch size", 1, MAX_BATCH)
INPUT_SIZE = in_range("input size", MIN_INPUT_SIZE, MAX_INPUT_SIZE)
