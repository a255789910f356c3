"""Pairwise win rates of method A over method B across prompts, with ties and bootstrap 95% CIs.

Win rate = (wins + ½ ties) / n over prompts, where a prompt is a tie when the two scores differ by at
most `tie_margin`. The CI is a percentile bootstrap over prompts, or over groups of prompts (e.g.
authors) when `groups` is given: prompts of one author are not independent, so resampling whole
authors gives the honest, wider interval. Written with NumPy because scipy's `bootstrap` has no
cluster resampling and the statistic is a one-liner.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class WinRate:
    rate: float  # (wins + ties/2) / n
    wins: int
    ties: int
    losses: int
    n: int
    ci_low: float
    ci_high: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.rate:.0%} [{self.ci_low:.0%}, {self.ci_high:.0%}] (W{self.wins}/T{self.ties}/L{self.losses})"


def outcomes(a: Sequence[float], b: Sequence[float], tie_margin: float = 0.0) -> np.ndarray:
    """Per prompt: 1 if A beats B, 0.5 for a tie (|a-b| <= tie_margin), 0 if B wins."""
    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"score lists differ in length: {a_arr.shape} vs {b_arr.shape}")
    diff = a_arr - b_arr
    return np.where(np.abs(diff) <= tie_margin, 0.5, (diff > 0).astype(float))


def pairwise_winrate(
    a: Sequence[float],
    b: Sequence[float],
    tie_margin: float = 0.0,
    n_boot: int = 2000,
    seed: int = 0,
    groups: Sequence[Hashable] | None = None,
    confidence: float = 0.95,
) -> WinRate:
    """Win rate of A over B on paired per-prompt scores (higher is better), with a bootstrap CI."""
    scores = outcomes(a, b, tie_margin)
    n = len(scores)
    if n == 0:
        return WinRate(float("nan"), 0, 0, 0, 0, float("nan"), float("nan"))
    wins, ties = int(np.sum(scores == 1.0)), int(np.sum(scores == 0.5))
    rng = np.random.default_rng(seed)
    if groups is None:
        samples = rng.integers(0, n, size=(n_boot, n))
        boot = scores[samples].mean(axis=1)
    else:
        if len(groups) != n:
            raise ValueError("groups must give one label per prompt")
        labels = list(dict.fromkeys(groups))
        index = {g: i for i, g in enumerate(labels)}
        codes = np.array([index[g] for g in groups])
        sums = np.bincount(codes, weights=scores, minlength=len(labels))
        counts = np.bincount(codes, minlength=len(labels)).astype(float)
        picks = rng.integers(0, len(labels), size=(n_boot, len(labels)))
        boot = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    return WinRate(float(scores.mean()), wins, ties, n - wins - ties, n, float(low), float(high))


def winrate_matrix(
    scores: Mapping[str, Sequence[float]],
    tie_margin: float = 0.0,
    n_boot: int = 2000,
    seed: int = 0,
    groups: Sequence[Hashable] | None = None,
) -> dict[str, dict[str, WinRate]]:
    """methods × methods: matrix[a][b] = win rate of a over b (the diagonal is 50% by definition)."""
    names = list(scores)
    return {
        a: {b: pairwise_winrate(scores[a], scores[b], tie_margin, n_boot, seed, groups) for b in names}
        for a in names
    }
