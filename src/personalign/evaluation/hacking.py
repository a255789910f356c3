"""Reward-hacking diagnostics: per-step text statistics, a divergence detector, and a plot.

During RL each step logs what the optimized reward cannot see directly: length, placeholder and
meta-commentary rates, each constraint's violation rate, and (every few steps) a held-out evaluator
that is not optimized. `detect_divergence` flags the first evaluation from which the optimized
reward kept rising while the held-out evaluator kept falling for `window` consecutive evaluations,
and `describe_divergence` says in plain words what changed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personalign.io import save_png
from personalign.judges.rules import (
    PLACEHOLDER,
    check_text,
    count_words,
    looks_truncated,
    meta_commentary,
    repeated_sentences,
)
from personalign.profiles.schema import Constraints


def text_diagnostics(texts: Sequence[str], constraints: Constraints | None = None) -> dict[str, float]:
    """Mean length and the share of texts showing each tell / violating each active constraint."""
    n = max(1, len(texts))
    stats: dict[str, float] = {
        "mean_words": sum(count_words(t) for t in texts) / n,
        "placeholder_rate": sum(bool(PLACEHOLDER.search(t)) for t in texts) / n,
        "meta_rate": sum(bool(meta_commentary(t)) for t in texts) / n,
        "repeat_rate": sum(bool(repeated_sentences(t)) for t in texts) / n,
        "truncation_rate": sum(looks_truncated(t) for t in texts) / n,
    }
    if constraints is not None:
        results = [check_text(t, constraints) for t in texts]
        if results and results[0]:
            for i, check in enumerate(results[0]):
                stats[f"violation_{check.name}"] = sum(not r[i].passed for r in results) / n
    return stats


@dataclass
class Divergence:
    step: int  # the step of the evaluation where the divergence began
    until_step: int
    changes: list[str] = field(default_factory=list)
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "until_step": self.until_step, "changes": self.changes, "message": self.message}


def _evaluations(records: Sequence[dict[str, Any]], reward_key: str, heldout_key: str) -> list[dict[str, Any]]:
    rows = []
    for record in records:
        reward, heldout = record.get(reward_key), record.get(heldout_key)
        if isinstance(reward, int | float) and isinstance(heldout, int | float) and not (
            math.isnan(reward) or math.isnan(heldout)
        ):
            rows.append(record)
    return rows


def _diverges(earlier: dict[str, Any], later: dict[str, Any], reward_key: str, heldout_key: str,
              tolerance: float) -> bool:
    return later[reward_key] > earlier[reward_key] + tolerance and later[heldout_key] < earlier[heldout_key] - tolerance


def detect_divergence(
    records: Sequence[dict[str, Any]], window: int = 3, reward_key: str = "reward", heldout_key: str = "heldout",
    tolerance: float = 0.0,
) -> Divergence | None:
    """First evaluation i such that, for `window` consecutive evaluations after it, the optimized reward
    rose (by more than `tolerance`) while the held-out evaluator fell (by more than `tolerance`).

    Only records carrying both keys count as evaluations. None when no such run exists.
    """
    evals = _evaluations(records, reward_key, heldout_key)
    for start in range(len(evals) - window):
        segment = evals[start : start + window + 1]
        if all(_diverges(earlier, later, reward_key, heldout_key, tolerance)
               for earlier, later in itertools.pairwise(segment)):
            end = start + window
            while end + 1 < len(evals) and _diverges(evals[end], evals[end + 1], reward_key, heldout_key, tolerance):
                end += 1
            first, last = evals[start], evals[end]
            divergence = Divergence(int(first.get("step", start)), int(last.get("step", end)))
            divergence.changes = describe_changes(first, last, reward_key, heldout_key)
            divergence.message = (
                f"reward hacking suspected from step {divergence.step}: " + ", ".join(divergence.changes)
            )
            return divergence
    return None


def _pct(value: float) -> str:
    return f"{value * 100:.0f} %"


def describe_changes(first: dict[str, Any], last: dict[str, Any], reward_key: str = "reward",
                     heldout_key: str = "heldout", min_rate_change: float = 0.1,
                     min_length_change: float = 0.2) -> list[str]:
    """Plain-words differences between two diagnostic records; only changes large enough to matter."""
    changes = [
        f"reward {first[reward_key]:.2f} → {last[reward_key]:.2f}",
        f"held-out {first[heldout_key]:.2f} → {last[heldout_key]:.2f}",
    ]
    if first.get("mean_words") and "mean_words" in last:
        relative = last["mean_words"] / first["mean_words"] - 1
        if abs(relative) >= min_length_change:
            changes.append(f"length {relative * 100:+.0f} %")
    names = {"placeholder_rate": "placeholders", "meta_rate": "meta-commentary", "repeat_rate": "repeated sentences",
             "truncation_rate": "truncated"}
    for key in sorted(k for k in last if k in names or k.startswith("violation_")):
        if key in first and abs(last[key] - first[key]) >= min_rate_change:
            label = names.get(key, key.removeprefix("violation_") + " violations")
            changes.append(f"{label} {_pct(first[key])} → {_pct(last[key])}")
    return changes


def plot_diagnostics(records: Sequence[dict[str, Any]], path: str | Path, divergence: Divergence | None = None,
                     reward_key: str = "reward", heldout_key: str = "heldout") -> Path:
    """Three panels (rewards, length, tell/violation rates) over steps; the divergence is shaded. Atomic write."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records if "step" in r and reward_key in r]
    rows = [r for r in records if "step" in r and reward_key in r]
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    reward_keys = [reward_key, *sorted(k for k in rows[0] if k.startswith("reward_"))] if rows else [reward_key]
    for key in reward_keys:
        axes[0].plot(steps, [r.get(key, math.nan) for r in rows], label=key)
    evals = _evaluations(rows, reward_key, heldout_key)
    if evals:
        axes[0].plot([r["step"] for r in evals], [r[heldout_key] for r in evals], "k--o",
                     label=f"{heldout_key} (not optimized)")
    if rows and "kl" in rows[0]:
        twin = axes[0].twinx()
        twin.plot(steps, [r.get("kl", math.nan) for r in rows], color="grey", alpha=0.5, label="KL")
        twin.set_ylabel("KL")
    axes[0].set_ylabel("reward")
    axes[0].legend(fontsize=7, loc="upper left")
    axes[1].plot(steps, [r.get("mean_words", math.nan) for r in rows])
    axes[1].set_ylabel("mean words")
    rate_keys = sorted({k for r in rows for k in r if k.endswith("_rate") or k.startswith("violation_")})
    for key in rate_keys:
        axes[2].plot(steps, [r.get(key, math.nan) for r in rows], label=key)
    axes[2].set_ylabel("share of samples")
    axes[2].set_xlabel("step")
    if rate_keys:
        axes[2].legend(fontsize=6, ncol=2)
    if divergence is not None:
        for ax in axes:
            ax.axvspan(divergence.step, divergence.until_step, color="red", alpha=0.12)
        axes[0].set_title(divergence.message, fontsize=8, color="darkred")
    fig.tight_layout()
    return save_png(fig, path)
