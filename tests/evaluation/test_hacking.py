"""Reward-hacking diagnostics: text statistics, the divergence detector on synthetic logs, and the plot."""

from __future__ import annotations

import pytest

from personalign.evaluation.hacking import detect_divergence, plot_diagnostics, text_diagnostics
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


def test_detector_fires_where_reward_rises_and_heldout_falls():
    # healthy for 3 evaluations, then from step 30 the reward climbs while the held-out score drops
    log = _log(
        rewards=[0.20, 0.30, 0.35, 0.40, 0.50, 0.60, 0.70],
        heldouts=[0.60, 0.65, 0.70, 0.72, 0.60, 0.50, 0.40],
        words=[100, 100, 105, 100, 130, 160, 180],
        placeholders=[0.0, 0.0, 0.0, 0.0, 0.1, 0.3, 0.4],
        every=10,
    )
    found = detect_divergence(log, window=3)
    assert found is not None
    assert (found.step, found.until_step) == (40, 70)
    assert found.message.startswith("reward hacking suspected from step 40: ")
    assert "length +80 %" in found.message
    assert "placeholders 0 % → 40 %" in found.message


def test_detector_stays_silent_on_a_healthy_run_and_on_short_dips():
    healthy = _log([0.1, 0.2, 0.3, 0.4, 0.5], [0.5, 0.55, 0.6, 0.62, 0.65], [90] * 5, [0.0] * 5)
    assert detect_divergence(healthy, window=3) is None
    # two diverging evaluations are not three
    dip = _log([0.1, 0.2, 0.3, 0.4, 0.3], [0.6, 0.5, 0.4, 0.45, 0.5], [90] * 5, [0.0] * 5)
    assert detect_divergence(dip, window=3) is None
    assert detect_divergence(dip, window=2) is not None
    # records without a held-out score (training steps between evaluations) are skipped, not misread
    sparse = [{"step": 1, "reward": 0.9}, *healthy]
    assert detect_divergence(sparse, window=3) is None


def test_plot_is_written(tmp_path):
    log = _log([0.2, 0.4, 0.6, 0.8], [0.6, 0.5, 0.4, 0.3], [100, 120, 140, 160], [0, 0.1, 0.2, 0.3])
    for row in log:
        row["kl"] = 0.01
        row["reward_rules"] = row["reward"]
    found = detect_divergence(log, window=3)
    path = plot_diagnostics(log, tmp_path / "plots" / "hacking.png", found)
    assert path.read_bytes()[:4] == b"\x89PNG"
