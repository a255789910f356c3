"""Reward-hacking diagnostics: per-step text statistics, a truly held-out evaluator, a trend detector, a plot.

During RL each step logs what the optimized reward cannot see directly: length, placeholder and
meta-commentary rates, each constraint's violation rate, and (every few steps) a held-out evaluator.
That evaluator must share no signal with the reward: `contaminated_evaluators` says which evaluators
each reward term optimizes too (a `length` term optimizes the rules' word-range check, `pairwise` with
the rules judge optimizes rule scores, a reward model trained on rule labels or on demonstration pairs
optimizes rules or similarity to the demonstrations), and `select_heldout_evaluator` picks one that none
touches, or refuses the configuration in one line. `detect_divergence` runs a trend test: the held-out
evaluator falling significantly over a run of evaluations while the reward rises; `describe_changes`
says in plain words what changed. `synthetic_log` makes the noisy logs its detection and false-alarm
rates are measured on (tests, `bench/hacking.py`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from personalign.errors import PersonalignError
from personalign.io import save_png
from personalign.judges.rules import (
    PLACEHOLDER,
    check_text,
    count_words,
    looks_truncated,
    meta_commentary,
    repeated_sentences,
)
from personalign.profiles.schema import Constraints, Profile

# Tuned on synthetic logs (bench/hacking.py): ≥ 5 evaluations per segment and p < 0.001 per segment keep
# false alarms near 1 % despite trying every segment start, and still catch a slow noisy decline.
DEFAULT_WINDOW = 5
DEFAULT_ALPHA = 0.001
REWARD_ALPHA = 0.05
# Evaluators `auto` may pick, cheapest first. `rm:RUN_DIR` (a reward model that is not in the reward) is
# allowed when named explicitly.
AUTO_EVALUATORS = ("rules", "similarity")


class RewardTermLike(Protocol):
    kind: str
    path: str | None


def _rm_provenance(path: str) -> tuple[str | None, bool | None]:
    """(labels, include_demonstrations) of a `reward train` run dir; None where it does not say."""
    import yaml

    config = Path(path) / "config.yaml"
    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None, None
    preference = data.get("preference") or {}
    return data.get("labels"), preference.get("include_demonstrations")


def contaminated_evaluators(terms: Sequence[RewardTermLike], pairwise_judge: str = "llm") -> dict[str, str]:
    """{evaluator: why} for every evaluator that shares signal with some reward term.

    rules → rules; length → rules (its word-range check); pairwise → its judge (rules or llm); rm:DIR and
    gen-rm:DIR (a generative judge trained the same way) → itself, plus rules when its pairs were labeled by
    rules (or mix), plus similarity when demonstrations joined its pairs (demonstration ≻ sample teaches
    "be like the demonstrations"). A reward model whose run dir does not say how it was trained is assumed
    to carry both.
    """
    out: dict[str, str] = {}
    for term in terms:
        if term.kind == "rules":
            out.setdefault("rules", "rules is a reward term")
        elif term.kind == "length":
            out.setdefault("rules", "the length term optimizes the rules' word-range check")
        elif term.kind == "pairwise":
            out.setdefault(pairwise_judge, f"the pairwise term is judged by {pairwise_judge}")
        elif term.kind in ("rm", "gen-rm") and term.path:
            what = "generative judge" if term.kind == "gen-rm" else "reward model"
            out.setdefault(f"{term.kind}:{term.path}", f"this {what} is a reward term")
            labels, demos = _rm_provenance(term.path)
            if labels in (None, "rules", "mix"):
                out.setdefault("rules", f"reward model {term.path} was trained on "
                               + ("rule-labeled pairs" if labels else "pairs of unknown origin"))
            sampled = labels in ("rules", "llm", "mix")  # the profile pipeline; otherwise a labeled set or file
            if labels is None or (sampled and demos is not False):
                out.setdefault("similarity", f"reward model {term.path} was trained on demonstration ≻ sample "
                               "pairs" if labels else f"reward model {term.path} does not say what it was trained on")
    return out


def select_heldout_evaluator(terms: Sequence[RewardTermLike], choice: str = "auto",
                             pairwise_judge: str = "llm") -> str | None:
    """The held-out evaluator's name (`rules`, `similarity`, `rm:RUN_DIR`), or None for `choice='none'`.

    `auto` takes the first of AUTO_EVALUATORS that no reward term touches; an explicit choice the reward
    touches, or `auto` with none left, is refused with one line saying why and what to pass instead.
    """
    if choice == "none":
        return None
    touched = contaminated_evaluators(terms, pairwise_judge)
    if choice == "auto":
        for name in AUTO_EVALUATORS:
            if name not in touched:
                return name
        reasons = "; ".join(f"{name}: {touched[name]}" for name in AUTO_EVALUATORS)
        raise PersonalignError(
            f"heldout auto: no held-out evaluator shares no signal with the reward ({reasons}); pass "
            "heldout rm:RUN_DIR (a reward model not in the reward) or heldout none to train unchecked"
        )
    if choice not in ("rules", "similarity") and not choice.startswith("rm:"):
        raise PersonalignError(f"heldout {choice!r}: use auto, rules, similarity, rm:RUN_DIR or none")
    if choice in touched:
        raise PersonalignError(f"heldout {choice}: not held out ({touched[choice]}); pick another evaluator or auto")
    return choice


def build_heldout_evaluator(name: str, profile: Profile) -> Callable[[list[str], list[str]], float]:
    """The evaluator as `(prompts, texts) -> mean score`: rules share passed, cosine to the nearest
    demonstration output (MiniLM), or a reward model's mean score."""
    import numpy as np

    if name == "rules":
        from personalign.judges.rules import rule_score

        return lambda prompts, texts: float(np.mean([rule_score(t, profile.constraints) for t in texts]))
    if name == "similarity":
        from personalign.backends.embedder import get_embedder

        embedder = get_embedder()
        demos = embedder.encode([d.output for d in profile.demonstrations])
        return lambda prompts, texts: float(np.mean((embedder.encode(list(texts)) @ demos.T).max(axis=1)))
    from personalign.judges.reward_model import RewardModel

    rm = RewardModel.load(name.removeprefix("rm:"))
    return lambda prompts, texts: float(np.nanmean(rm.score(prompts, texts)))


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


class _Trends:
    """OLS slope and its t statistic for any segment of a series, in O(1) from prefix sums.

    By hand because the detector tries every (start, end) segment: scipy's `linregress` per segment
    made a 20-evaluation log take ~0.1 s, too slow for calibrating on hundreds of logs.
    """

    def __init__(self, x: Sequence[float], y: Sequence[float]):
        import numpy as np

        x_arr, y_arr = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        self.sums = [np.concatenate([[0.0], np.cumsum(v)]) for v in (x_arr, y_arr, x_arr * x_arr, x_arr * y_arr,
                                                                     y_arr * y_arr)]

    def slope_t(self, start: int, end: int) -> tuple[float, float]:
        """(slope, t) over items start..end inclusive; t is ±inf for a perfect fit."""
        n = end - start + 1
        sx, sy, sxx, sxy, syy = (float(c[end + 1] - c[start]) for c in self.sums)
        var_x, cov, var_y = sxx - sx * sx / n, sxy - sx * sy / n, syy - sy * sy / n
        if var_x <= 0:
            return 0.0, 0.0
        slope = cov / var_x
        residual = max(0.0, var_y - slope * cov)
        if n <= 2 or residual <= 1e-12 * max(1.0, var_y):
            return slope, math.copysign(math.inf, slope) if slope else 0.0
        return slope, slope / math.sqrt(residual / (n - 2) / var_x)


def detect_divergence(
    records: Sequence[dict[str, Any]], window: int = DEFAULT_WINDOW, reward_key: str = "reward",
    heldout_key: str = "heldout", alpha: float = DEFAULT_ALPHA,
) -> Divergence | None:
    """The first evaluation at which, over some run of at least `window` evaluations ending there, the
    held-out evaluator has a significantly falling trend (one-sided OLS slope test, p < `alpha`) while
    the optimized reward's trend rises (p < 0.05: hacking is the reward rising at the held-out's cost).

    A trend test rather than "strictly opposite movement at every evaluation": evaluation scores are
    noisy (greedy outputs of a few prompts), so real divergence rarely moves monotonically. Every
    segment start is tried (a change-point search), which is why `alpha` is small; the rates this gives
    on synthetic noisy logs are in BENCHMARKS.md (`bench/hacking.py`). The divergence is reported from
    the significant segment's start with the highest held-out score (the top of the fall) to the last
    evaluation that keeps that segment significant.
    Only records carrying both keys count as evaluations. None when no such segment exists.
    """
    from scipy.stats import t as student_t

    window = max(3, window)  # a slope test needs at least one residual degree of freedom
    evals = _evaluations(records, reward_key, heldout_key)
    steps = [float(r.get("step", i)) for i, r in enumerate(evals)]
    rewards = _Trends(steps, [r[reward_key] for r in evals])
    heldouts = _Trends(steps, [r[heldout_key] for r in evals])

    def p_falling(start: int, end: int) -> float | None:
        """One-sided p that the held-out falls over start..end while the reward rises; None if not < alpha."""
        df = end - start - 1
        reward_slope, reward_t = rewards.slope_t(start, end)
        if not reward_slope > 0 or float(student_t.sf(reward_t, df=df)) >= REWARD_ALPHA:
            return None
        slope, t_stat = heldouts.slope_t(start, end)
        if not slope < 0:
            return None
        p = float(student_t.cdf(t_stat, df=df))
        return p if p < alpha else None

    for end in range(window - 1, len(evals)):
        found = [s for s in range(0, end - window + 2) if p_falling(s, end) is not None]
        if not found:
            continue
        # The onset estimate: the significant segment that starts at the held-out's peak (the fall's top).
        start = max(found, key=lambda s: (evals[s][heldout_key], -s))
        while end + 1 < len(evals) and p_falling(start, end + 1) is not None:
            end += 1
        first, last = evals[start], evals[end]
        divergence = Divergence(int(first.get("step", start)), int(last.get("step", end)))
        divergence.changes = describe_changes(first, last, reward_key, heldout_key)
        divergence.message = f"reward hacking suspected from step {divergence.step}: " + ", ".join(divergence.changes)
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


def synthetic_log(evaluations: int = 20, onset: int | None = 8, noise: float = 0.05, drop: float = 0.02,
                  every: int = 5, seed: int = 0) -> list[dict[str, Any]]:
    """A noisy RL evaluation log for calibrating the detector: the reward rises 0.02 per evaluation; the
    held-out evaluator drifts up 0.003 per evaluation and, from evaluation `onset` (None = healthy run),
    falls `drop` per evaluation; both carry Gaussian noise of sd `noise` (greedy outputs of a few prompts)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.arange(evaluations)
    reward = 0.2 + 0.02 * t + rng.normal(0.0, noise, evaluations)
    heldout = 0.6 + 0.003 * t + rng.normal(0.0, noise, evaluations)
    if onset is not None:
        heldout -= drop * np.clip(t - onset, 0, None)
    return [{"step": int(i + 1) * every, "reward": float(r), "heldout": float(h)}
            for i, (r, h) in enumerate(zip(reward, heldout, strict=True))]


def detector_rates(n_logs: int = 200, seed: int = 0, **log: Any) -> dict[str, float]:
    """Detection rate on diverging synthetic logs (fired at or after the onset), the share that fired
    before it, and the false-alarm rate on healthy logs of the same noise."""
    onset = log.pop("onset", 8)
    every = log.get("every", 5)
    detected = early = false_alarms = 0
    for i in range(n_logs):
        found = detect_divergence(synthetic_log(onset=onset, seed=seed + 2 * i, **log))
        if found is not None and found.until_step >= (onset + 1) * every:
            detected += 1
        elif found is not None:
            early += 1
        false_alarms += detect_divergence(synthetic_log(onset=None, seed=seed + 2 * i + 1, **log)) is not None
    return {"detection_rate": detected / n_logs, "fired_before_onset": early / n_logs,
            "false_alarm_rate": false_alarms / n_logs, "n_logs": n_logs}
