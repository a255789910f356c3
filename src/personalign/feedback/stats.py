"""Win rates of each method from a person's blind choices, with bootstrap CIs, and a position-bias check."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from personalign.evaluation.winrate import WinRate, pairwise_winrate


def label(method: str, run: str | None) -> str:
    """What a person reads for a source: the method, or `run:NAME` (`+prompt` kept) for a trained run."""
    if not run:
        return method
    return f"run:{Path(run).name}" + ("+prompt" if method.endswith("+prompt") else "")


def method_winrates(answers: Sequence[dict[str, Any]], seed: int = 0) -> dict[str, WinRate]:
    """Per method: (wins + ties/2) / comparisons against a *different* method, with a 95% bootstrap CI.

    Each answer is one paired outcome; comparing a method with itself says nothing about it and is skipped.
    """
    outcomes: dict[str, list[float]] = defaultdict(list)
    for row in answers:
        x, y = label(row["x_method"], row["x_run"]), label(row["y_method"], row["y_run"])
        if x == y:
            continue
        score_x = {"x": 1.0, "y": 0.0, "tie": 0.5}[row["winner"]]
        outcomes[x].append(score_x)
        outcomes[y].append(1.0 - score_x)
    # pairwise_winrate against a constant 0.5 maps 1 → win, 0.5 → tie, 0 → loss, and bootstraps over answers.
    return {name: pairwise_winrate(scores, [0.5] * len(scores), seed=seed)
            for name, scores in sorted(outcomes.items())}


def position_bias(answers: Sequence[dict[str, Any]]) -> tuple[int, int]:
    """(times the left candidate A was chosen, non-tie answers): far from half means position, not quality."""
    decided = [r for r in answers if r["shown_choice"] != "tie"]
    return sum(r["shown_choice"] == "A" for r in decided), len(decided)
