"""The judge interface: score one output, or compare two (A / B / tie), and the rules judge.

Every judge (rules, LLM, reward model) answers the same two questions so validation, preference
labelling and RL rewards can swap one for another. `None` means "the judge gave no usable answer";
it is counted by callers, never mapped to a label.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from personalign.profiles.schema import Profile

Label = Literal["A", "B", "tie"]


@dataclass
class JudgeScore:
    """A pointwise judgment: `value` (None when unparseable), the judge's feedback, and whether it parsed."""

    value: float | None
    feedback: str = ""
    parsed: bool = True
    raw: str = ""


@dataclass
class Verdict:
    """A pairwise judgment of (a, b), already combined over both presentation orders where the judge has order.

    `winner` is None when the answer could not be parsed. `orders` holds the per-order labels mapped back to
    the caller's a/b naming (None = unparseable); `position_consistent` is False when the two orders disagree.
    """

    winner: Label | None
    orders: list[Label | None] = field(default_factory=list)
    feedback: str = ""

    @property
    def parsed(self) -> bool:
        return self.winner is not None

    @property
    def position_consistent(self) -> bool | None:
        """None when fewer than two orders parsed (or the judge is order-free)."""
        labels = [o for o in self.orders if o is not None]
        if len(self.orders) < 2 or len(labels) < 2:
            return None
        return labels[0] == labels[1]


def combine_orders(first: Label | None, second_mapped: Label | None) -> Label | None:
    """Combine the verdict on (a, b) with the verdict on (b, a) mapped back to a/b names.

    Agreeing orders give that label; disagreeing ones give a tie, so a judge that always picks the same
    position scores a tie rather than a win. If either order is unparseable the pair is unparseable.
    """
    if first is None or second_mapped is None:
        return None
    return first if first == second_mapped else "tie"


def swap_label(label: Label | None) -> Label | None:
    return {"A": "B", "B": "A"}.get(label, label) if label is not None else None  # type: ignore[return-value]


def label_from_scores(a: float | None, b: float | None, tol: float = 1e-9) -> Label | None:
    """Higher score wins; equal (within tol) is a tie; a missing or NaN score makes the pair unparseable."""
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return None
    if abs(a - b) <= tol:
        return "tie"
    return "A" if a > b else "B"


class Judge(ABC):
    """Scores outputs for a prompt, optionally against a profile's rubric and constraints."""

    name: str = "judge"
    #: True when the judge sees the two outputs in an order (LLM judges): compare asks both orders.
    order_sensitive: bool = False

    @abstractmethod
    def score_many(
        self, prompts: Sequence[str], outputs: Sequence[str], profile: Profile | None = None,
        rubrics: Sequence[str | None] | None = None,
    ) -> list[JudgeScore]:
        """One score per (prompt, output); `rubrics` optionally overrides the rubric per item."""

    def score(self, prompt: str, output: str, profile: Profile | None = None) -> JudgeScore:
        return self.score_many([prompt], [output], profile)[0]

    def compare_many(
        self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str], profile: Profile | None = None,
        rubrics: Sequence[str | None] | None = None,
    ) -> list[Verdict]:
        """Default: score both outputs and let the higher one win (order-free, so no position bias)."""
        n = len(prompts)
        scores = self.score_many([*prompts, *prompts], [*a, *b], profile, [*(rubrics or [None] * n)] * 2)
        verdicts = []
        for i in range(n):
            sa, sb = scores[i], scores[n + i]
            label = label_from_scores(sa.value, sb.value)
            verdicts.append(Verdict(label, [label], feedback=f"A: {sa.feedback} | B: {sb.feedback}"))
        return verdicts

    def compare(self, prompt: str, a: str, b: str, profile: Profile | None = None) -> Verdict:
        return self.compare_many([prompt], [a], [b], profile)[0]


class RulesJudge(Judge):
    """Deterministic: share of the profile's constraints plus the generic reward-hacking tells that pass."""

    name = "rules"

    def __init__(self, tells: bool = True):
        self.tells = tells

    def score_many(
        self, prompts: Sequence[str], outputs: Sequence[str], profile: Profile | None = None,
        rubrics: Sequence[str | None] | None = None,
    ) -> list[JudgeScore]:
        from personalign.judges.rules import check_tells, check_text, rule_score

        constraints = profile.constraints if profile is not None else None
        scores = []
        for output in outputs:
            results = (check_text(output, constraints) if constraints else []) + (
                check_tells(output) if self.tells else []
            )
            failed = "; ".join(f"{r.name}: {r.reason}" for r in results if not r.passed)
            scores.append(JudgeScore(rule_score(output, constraints, self.tells), failed or "all checks pass"))
        return scores
