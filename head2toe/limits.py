"""Accepted ranges of the numeric settings, in one place: CLI flags and sweep YAML fields
are checked against them before any compute, so a typo costs seconds, not hours."""
from __future__ import annotations

MAX_STEPS = 100_000  # the paper's longest schedule is 10,000 (VTAB fine-tuning); 1e10 would run for days
MAX_LR = 10.0  # Adam/SGD steps far above 1 only diverge
MAX_SEED = 2**63 - 1  # numpy takes any non-negative int, torch.Generator.manual_seed at most 64 bits
MAX_BATCH = 65_536
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 16, 4096  # px


def lr_ok(v: float) -> bool:
    return 0 < v <= MAX_LR


def steps_ok(v: int) -> bool:
    return 0 < v <= MAX_STEPS


def seed_ok(v: int) -> bool:
    return 0 <= v <= MAX_SEED
