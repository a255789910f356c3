"""Characterization metrics against values computed by hand on a 3-user toy."""

from __future__ import annotations

import pytest

from personalign.errors import DataError
from personalign.prefbench.characterize import characterize
from personalign.prefbench.schema import PrefData, PrefPair


def toy() -> PrefData:
    """Texts A < B < C < D (so a vote is +1 when the alphabetically first text wins).

    {A,B}: u1 A, u2 A, u3 B          → labels +1 +1 −1, majority +1 (disagreement)
    {A,C}: u1 A, u2 A, u3 C          → +1 +1 −1, majority +1 (disagreement)
    {B,C}: u1 B,B  u2 C  u3 C,B      → +1 −1 0 (u3 contradicts itself), majority 0 (disagreement)
    {B,D}: u1 B, u2 B, u3 B          → all +1 (agreement)
    {A,D}: u1 A                      → single labeler, not shared
    """
    votes = [
        ("u1", "A", "B"), ("u2", "A", "B"), ("u3", "B", "A"),
        ("u1", "A", "C"), ("u2", "A", "C"), ("u3", "C", "A"),
        ("u1", "B", "C"), ("u1", "B", "C"), ("u2", "C", "B"), ("u3", "C", "B"), ("u3", "B", "C"),
        ("u1", "B", "D"), ("u2", "B", "D"), ("u3", "B", "D"),
        ("u1", "A", "D"),
    ]
    return PrefData("toy", [PrefPair(u, "p", c, r, "train") for u, c, r in votes])


def test_three_user_toy_matches_hand_computation() -> None:
    r = characterize(toy())
    assert r["n_users"] == 3 and r["n_pairs"] == 15
    assert r["n_comparisons"] == 5 and r["n_shared_comparisons"] == 4
    assert r["disagreement"] == pytest.approx(3 / 4)
    # Repeats: u1 on {B,C} agrees with itself (2/2), u3 does not (1/2 either way): mean 0.75.
    assert r["n_repeated"] == 2
    assert r["consistency"] == pytest.approx(0.75)
    u1, u2, u3 = (r["per_user"][u] for u in ("u1", "u2", "u3"))
    # Agreement over shared comparisons: 1, 1, 0.5 (majority tie), 1 for u1 and u2; 0, 0, 0.5, 1 for u3.
    assert u1["agreement"] == pytest.approx(3.5 / 4)
    assert u2["agreement"] == pytest.approx(3.5 / 4)
    assert u3["agreement"] == pytest.approx(1.5 / 4)
    assert r["minority_users"] == ["u3"]
    # Oracle = each vote predicted by the user's own label; majority = by the majority label; ties score 0.5.
    assert (u1["oracle_acc"], u1["majority_acc"]) == pytest.approx((6 / 6, 5 / 6))
    assert (u2["oracle_acc"], u2["majority_acc"]) == pytest.approx((4 / 4, 3.5 / 4))
    assert (u3["oracle_acc"], u3["majority_acc"]) == pytest.approx((4 / 5, 2 / 5))
    assert u3["room"] == pytest.approx(0.4)
    assert r["mean_room"] == pytest.approx((1 / 6 + 0.125 + 0.4) / 3)


def test_no_repeats_means_consistency_is_unmeasurable() -> None:
    data = PrefData("t", [PrefPair("a", "p", "x", "y", "train"), PrefPair("b", "p", "y", "x", "train")])
    r = characterize(data)
    assert r["consistency"] is None
    assert r["disagreement"] == 1.0
    # Two users, opposite labels: the majority is a tie, so both agree "half" and neither is a minority.
    assert r["minority_users"] == []


def test_empty_split_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="split 'test' is empty"):
        characterize(toy(), split="test")
