"""Win rates with ties and bootstrap CIs on hand-made score tables."""

from __future__ import annotations

import math

import numpy as np
import pytest

from personalign.evaluation.winrate import outcomes, pairwise_winrate, winrate_matrix


def test_win_tie_loss_counts_match_hand_computation():
    a = [3.0, 2.0, 1.0, 5.0]
    b = [1.0, 2.0, 3.0, 4.0]
    # prompt 1: win, 2: tie, 3: loss, 4: win → (2 + 0.5) / 4
    result = pairwise_winrate(a, b, n_boot=200)
    assert (result.wins, result.ties, result.losses, result.n) == (2, 1, 1, 4)
    assert result.rate == pytest.approx(0.625)
    assert result.ci_low <= result.rate <= result.ci_high
    assert result.ci_low >= 0.0 and result.ci_high <= 1.0


def test_tie_margin_turns_small_gaps_into_ties():
    assert outcomes([1.05, 2.0], [1.0, 1.0], tie_margin=0.1).tolist() == [0.5, 1.0]
    assert outcomes([1.05, 2.0], [1.0, 1.0]).tolist() == [1.0, 1.0]


def test_bootstrap_ci_is_degenerate_when_every_prompt_agrees_and_wide_when_split():
    sweep = pairwise_winrate([1.0] * 10, [0.0] * 10, n_boot=500)
    assert (sweep.rate, sweep.ci_low, sweep.ci_high) == (1.0, 1.0, 1.0)
    split = pairwise_winrate([1.0] * 10 + [0.0] * 10, [0.0] * 10 + [1.0] * 10, n_boot=2000, seed=1)
    assert split.rate == 0.5
    # Binomial sd of a 20-prompt mean at p=0.5 is 0.112; a 95% interval is about ±0.22.
    assert split.ci_low == pytest.approx(0.28, abs=0.06)
    assert split.ci_high == pytest.approx(0.72, abs=0.06)


def test_cluster_bootstrap_over_authors_is_wider_than_over_prompts():
    # Author x: method A wins all 10 prompts; author y: loses all 10. Prompts within an author are not
    # independent, so resampling authors must give the (much) wider interval.
    a = [1.0] * 20
    b = [0.0] * 10 + [2.0] * 10
    groups = ["x"] * 10 + ["y"] * 10
    flat = pairwise_winrate(a, b, n_boot=2000)
    clustered = pairwise_winrate(a, b, n_boot=2000, groups=groups)
    assert flat.rate == clustered.rate == 0.5
    assert clustered.ci_low == 0.0 and clustered.ci_high == 1.0  # resampled author sets: {x,x}, {x,y}, {y,y}
    assert flat.ci_high - flat.ci_low < 0.6


def test_matrix_is_antisymmetric_with_half_on_the_diagonal():
    scores = {"base": [0.1, 0.2, 0.3], "prompt": [0.2, 0.2, 0.1], "sft": [0.9, 0.8, 0.7]}
    matrix = winrate_matrix(scores, n_boot=100)
    for m in scores:
        assert matrix[m][m].rate == 0.5
        for n in scores:
            assert matrix[m][n].rate + matrix[n][m].rate == pytest.approx(1.0)
    assert matrix["sft"]["base"].rate == 1.0
    # prompt vs base: win (0.2>0.1), tie (0.2=0.2), loss (0.1<0.3) → 0.5
    assert matrix["prompt"]["base"].rate == 0.5


def test_empty_and_mismatched_inputs():
    assert math.isnan(pairwise_winrate([], []).rate)
    with pytest.raises(ValueError):
        pairwise_winrate([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        pairwise_winrate([1.0, 2.0], [0.0, 0.0], groups=["a"])
    assert np.isfinite(pairwise_winrate([1.0], [0.0]).ci_low)
