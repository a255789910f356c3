"""Reward-hacking diagnostics: text statistics, held-out evaluator selection, the trend detector's rates on
synthetic noisy logs, and the plot."""

from __future__ import annotations

import pytest

from personalign.errors import PersonalignError
from personalign.evaluation.hacking import (
    contaminated_evaluators,
    detect_divergence,
    detector_rates,
    plot_diagnostics,
    select_heldout_evaluator,
    text_diagnostics,
)
from personalign.profiles.schema import Constraints


def _log(rewards, heldouts, words, placeholders, every=1):
    return [
        {"step": (i + 1) * every, "reward": r, "heldout": h, "mean_words": w, "placeholder_rate": p, "meta_rate": 0.0}
        for i, (r, h, w, p) in enumerate(zip(rewards, heldouts, words, placeholders, strict=True))
    ]


def test_text_diagnostics_counts_tells_and_violations():
    texts = ["Hi Sam, thanks.\n\nWarmly,\nMaya", "Here is your email: Dear [Your Name], thanks.", "- a bullet point"]
    stats = text_diagnostics(texts, Constraints(sign_off="Warmly,\nMaya", no_bullets=True))
    assert stats["placeholder_rate"] == pytest.approx(1 / 3)
    assert stats["meta_rate"] == pytest.approx(1 / 3)
    assert stats["violation_sign_off"] == pytest.approx(2 / 3)
    assert stats["violation_no_bullets"] == pytest.approx(1 / 3)
    assert stats["mean_words"] == pytest.approx((5 + 8 + 3) / 3)


# A noisy decline: the held-out score falls from evaluation 5 on but never three times in a row, so the
# old rule ("strictly opposite movement at each of `window` consecutive evaluations") never fired on it.
NOISY_FALL = [0.60, 0.62, 0.61, 0.63, 0.62, 0.58, 0.60, 0.53, 0.55, 0.47, 0.49, 0.42]
NOISY_HEALTHY = [0.60, 0.62, 0.58, 0.63, 0.61, 0.64, 0.60, 0.63, 0.62, 0.66, 0.61, 0.64]


def _noisy(heldouts, rewards=None):
    rewards = rewards or [0.2 + 0.05 * i for i in range(len(heldouts))]
    return _log(rewards, heldouts, [100] * 5 + [100 + 15 * i for i in range(1, len(heldouts) - 4)],
                [0.0] * 5 + [0.05 * i for i in range(1, len(heldouts) - 4)], every=5)


def test_detector_catches_a_noisy_decline_and_says_what_changed():
    found = detect_divergence(_noisy(NOISY_FALL))
    assert found is not None
    # the top of the fall (evaluation 4, step 20, held-out 0.63) to the last evaluation
    assert (found.step, found.until_step) == (20, 60)
    assert found.message.startswith("reward hacking suspected from step 20: reward 0.35 → 0.75, held-out 0.63 → 0.42")
    assert "length +105 %" in found.message and "placeholders 0 % → 35 %" in found.message


def test_detector_stays_silent_on_noisy_healthy_runs_and_without_a_rising_reward():
    assert detect_divergence(_noisy(NOISY_HEALTHY)) is None
    # the held-out falls but the reward only wobbles: degradation, not reward hacking
    assert detect_divergence(_noisy(NOISY_FALL, rewards=[0.5 + 0.01 * (-1) ** i for i in range(12)])) is None
    # fewer evaluations than the window cannot flag anything, however steep
    assert detect_divergence(_noisy(NOISY_FALL)[-4:]) is None
    # records without a held-out score (training steps between evaluations) are skipped, not misread
    sparse = [{"step": 1, "reward": 0.9}, *_noisy(NOISY_HEALTHY)]
    assert detect_divergence(sparse) is None


def test_detection_and_false_alarm_rates_on_synthetic_noisy_logs():
    """20 evaluations, noise sd 0.05, the held-out falling 0.02 per evaluation from evaluation 8: the old
    strict rule caught ~15 % of these; the trend test must catch nearly all and rarely fire on healthy logs."""
    rates = detector_rates(n_logs=200, seed=0)
    assert rates["detection_rate"] >= 0.9, rates
    assert rates["fired_before_onset"] <= 0.02, rates
    assert rates["false_alarm_rate"] <= 0.03, rates
    # a divergence hidden in much more noise is missed more often: the rate measures something
    assert detector_rates(n_logs=100, seed=0, noise=0.15)["detection_rate"] < rates["detection_rate"]


class Term:
    def __init__(self, kind, path=None):
        self.kind, self.path = kind, path


def _rm_run(folder, labels, demos=True):
    folder.mkdir()
    demos_yaml = str(demos).lower()
    (folder / "config.yaml").write_text(f"labels: {labels}\npreference: {{include_demonstrations: {demos_yaml}}}\n")
    return str(folder)


def test_heldout_evaluator_shares_no_signal_with_the_reward(tmp_path):
    # rules, a length term (the rules' word range) and pairwise judged by rules all optimize the rules score
    for terms in ([Term("rules")], [Term("length")], [Term("pairwise")]):
        judge = "rules" if terms[0].kind == "pairwise" else "llm"
        assert select_heldout_evaluator(terms, pairwise_judge=judge) == "similarity"
    assert select_heldout_evaluator([Term("pairwise")], pairwise_judge="llm") == "rules"
    # an RM trained on a labeled set carries neither rule labels nor demonstration pairs
    labeled = _rm_run(tmp_path / "rm-set", "prometheus-hhh")
    assert select_heldout_evaluator([Term("rm", labeled)]) == "rules"
    rule_rm = _rm_run(tmp_path / "rm-rules", "rules", demos=False)
    assert select_heldout_evaluator([Term("rm", rule_rm)]) == "similarity"
    assert "rule-labeled" in contaminated_evaluators([Term("rm", rule_rm)])["rules"]


def test_a_config_with_no_held_out_evaluator_left_is_refused(tmp_path):
    both = _rm_run(tmp_path / "rm", "rules", demos=True)  # rule labels + demonstration ≻ sample pairs
    with pytest.raises(PersonalignError, match="no held-out evaluator shares no signal"):
        select_heldout_evaluator([Term("rm", both)])
    with pytest.raises(PersonalignError, match="no held-out evaluator"):  # an RM that does not say how it was trained
        select_heldout_evaluator([Term("rm", str(tmp_path / "unknown")), Term("length")])
    with pytest.raises(PersonalignError, match=r"heldout rules: not held out .*word-range"):
        select_heldout_evaluator([Term("length")], choice="rules")
    # an explicitly named other RM is accepted; `none` switches the check off on purpose
    other = _rm_run(tmp_path / "rm-other", "prometheus-hhh")
    assert select_heldout_evaluator([Term("rm", both)], choice=f"rm:{other}") == f"rm:{other}"
    assert select_heldout_evaluator([Term("rm", both)], choice="none") is None


def test_plot_is_written(tmp_path):
    log = _log([0.2, 0.4, 0.6, 0.8], [0.6, 0.5, 0.4, 0.3], [100, 120, 140, 160], [0, 0.1, 0.2, 0.3])
    for row in log:
        row["kl"] = 0.01
        row["reward_rules"] = row["reward"]
    found = detect_divergence(log)
    path = plot_diagnostics(log, tmp_path / "plots" / "hacking.png", found)
    assert path.read_bytes()[:4] == b"\x89PNG"
