"""A feature method's grid point (`HParams`), and the check every grid point (feature or
image method) goes through: the shared rules of head2toe.limits."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from head2toe.limits import COEF, KEEP_FRACTION, LR, STEPS, TARGET_SIZE


def check_point(lr: float, steps: int, coef: float, target_size: int | None = None,
                keep_fractions: Sequence[float] = ()) -> None:
    """One grid point's values, each against its rule (the first one off is named)."""
    LR.check(lr)
    STEPS.check(steps)
    COEF.check(coef)
    if target_size is not None:
        TARGET_SIZE.check(target_size)
    for f in keep_fractions:
        KEEP_FRACTION.check(f)


@dataclass(frozen=True)
class HParams:
    """One point of a method's grid. Keep fractions are evaluated inside the same trial:
    they reuse the group-lasso head, so they cost only the small second probe."""

    lr: float
    steps: int
    coef: float
    target_size: int
    keep_fractions: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        TARGET_SIZE.check(self.target_size)  # required here
        check_point(self.lr, self.steps, self.coef, self.target_size, self.keep_fractions)

    def as_dict(self) -> dict:
        return {"lr": self.lr, "steps": self.steps, "coef": self.coef, "target_size": self.target_size}
