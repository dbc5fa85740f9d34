"""A config's `expected:` block, checked against what the sweep measured.

    expected:
      source: "where the numbers come from"             # a string: a note, never checked
      synth_dsprites_loc: {head2toe_minus_linear_at_least: 15}
      digits: {head2toe_at_least: 90, linear_at_most: 99}

Each rule names methods of the sweep and a bound in test-accuracy points (%), on the mean
over final seeds, checked for every backbone of the sweep: `A_at_least: x` (mean of A >= x),
`A_at_most: x`, `A_minus_B_at_least: x` (mean of A - mean of B >= x), `A_minus_B_at_most: x`.
Rules are parsed before any compute (`parse_expected`, one H2TError line naming the rule);
`check_expected` gives one line per rule and backbone, saying whether it held.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from head2toe.errors import H2TError

BOUNDS = {"_at_least": ">=", "_at_most": "<="}


@dataclass(frozen=True)
class Rule:
    task: str
    method: str
    minus: str | None  # the method subtracted, or None for a bound on `method` alone
    op: str  # ">=" or "<="
    bound: float

    def text(self) -> str:
        what = self.method if self.minus is None else f"{self.method} - {self.minus}"
        return f"{self.task}: {what} {self.op} {self.bound:g}"


@dataclass(frozen=True)
class Outcome:
    rule: Rule
    backbone: str
    value: float | None  # None: a method had no finished final run

    @property
    def met(self) -> bool:
        if self.value is None:
            return False
        return self.value >= self.rule.bound if self.rule.op == ">=" else self.value <= self.rule.bound

    def line(self) -> str:
        if self.value is None:
            return f"expected {self.rule.text()} ({self.backbone}): not checked, no finished final run of every method named"
        verdict = "met" if self.met else "MISSED"
        return f"expected {self.rule.text()} ({self.backbone}): {verdict}, measured {self.value:.1f}"


def parse_expected(expected: dict, tasks: list[str], methods: list[str]) -> list[Rule]:
    """The rules of an `expected:` block; a rule that names no task or method of the sweep,
    or has no known bound or a non-numeric value, is one H2TError line."""
    rules = []
    for task, body in expected.items():
        if isinstance(body, str):
            continue  # a note such as `source:`
        if task not in tasks:
            raise H2TError(f"expected.{task}: not a task of this sweep ({', '.join(tasks)}); a string value is a note")
        if not isinstance(body, dict) or not body:
            raise H2TError(f"expected.{task}: give rules such as {{head2toe_minus_linear_at_least: 15}}, got {body!r}")
        for name, bound in body.items():
            suffix = next((s for s in BOUNDS if str(name).endswith(s)), None)
            if suffix is None:
                raise H2TError(f"expected.{task}.{name}: a rule ends in {' or '.join(BOUNDS)}, e.g. head2toe_minus_linear_at_least")
            if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound):
                raise H2TError(f"expected.{task}.{name}: the bound is accuracy points, a number; got {bound!r}")
            method, _, minus = str(name).removesuffix(suffix).partition("_minus_")
            for m in filter(None, (method, minus)):
                if m not in methods:
                    raise H2TError(f"expected.{task}.{name}: {m!r} is not a method of this sweep; choose from {', '.join(methods)}")
            rules.append(Rule(task, method, minus or None, BOUNDS[suffix], float(bound)))
    return rules


def check_expected(rules: list[Rule], means: dict[tuple[str, str, str], float], backbones: list[str]) -> list[Outcome]:
    """`means[(task, backbone, method)]`: mean test accuracy (%) over seeds."""
    out = []
    for rule in rules:
        for bb in backbones:
            a = means.get((rule.task, bb, rule.method))
            b = means.get((rule.task, bb, rule.minus)) if rule.minus else 0.0
            out.append(Outcome(rule, bb, None if a is None or b is None else a - b))
    return out
