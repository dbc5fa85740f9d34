"""A feature method's grid point (`HParams`), checked by the shared rules of head2toe.limits."""
from __future__ import annotations

from dataclasses import dataclass

from head2toe.limits import COEF, KEEP_FRACTION, LR, STEPS, TARGET_SIZE


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
        LR.check(self.lr)
        STEPS.check(self.steps)
        COEF.check(self.coef)
        TARGET_SIZE.check(self.target_size)
        for f in self.keep_fractions:
            KEEP_FRACTION.check(f)

    def as_dict(self) -> dict:
        return {"lr": self.lr, "steps": self.steps, "coef": self.coef, "target_size": self.target_size}
