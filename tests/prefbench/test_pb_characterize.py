"""Characterization metrics (leave-one-out majority) against values computed by hand on a 3-user toy."""

from __future__ import annotations

import pytest

from personalign.errors import DataError
from personalign.prefbench.characterize import characterize, characterize_splits
from personalign.prefbench.schema import PrefData, PrefPair


def toy() -> PrefData:
    """Texts A < B < C < D (so a vote is +1 when the alphabetically first text wins).

    {A,B}: u1 A, u2 A, u3 B          → labels +1 +1 −1, majority +1 (disagreement)
    {A,C}: u1 A, u2 A, u3 C          → +1 +1 −1, majority +1 (disagreement)
    {B,C}: u1 B,B  u2 C  u3 C,B      → +1 −1 0 (u3 contradicts itself), majority 0 (disagreement)
    {B,D}: u1 B, u2 B, u3 B          → all +1 (agreement)
    {A,D}: u1 A                      → single labeler, not shared
    """
    return PrefData("toy", [PrefPair(u, "p", c, r, "train") for u, c, r in toy_votes()])


def toy_votes() -> list[tuple[str, str, str]]:
    return [
        ("u1", "A", "B"), ("u2", "A", "B"), ("u3", "B", "A"),
        ("u1", "A", "C"), ("u2", "A", "C"), ("u3", "C", "A"),
        ("u1", "B", "C"), ("u1", "B", "C"), ("u2", "C", "B"), ("u3", "C", "B"), ("u3", "B", "C"),
        ("u1", "B", "D"), ("u2", "B", "D"), ("u3", "B", "D"),
        ("u1", "A", "D"),
    ]


def test_three_user_toy_matches_hand_computation() -> None:
    r = characterize(toy())
    assert r["n_users"] == 3 and r["n_pairs"] == 15
    assert r["n_comparisons"] == 5 and r["n_shared_comparisons"] == 4
    assert r["disagreement"] == pytest.approx(3 / 4)
    # Repeats: u1 on {B,C} agrees with itself (2/2), u3 does not (1/2 either way): mean 0.75.
    assert r["n_repeated"] == 2
    assert r["consistency"] == pytest.approx(0.75)
    u1, u2, u3 = (r["per_user"][u] for u in ("u1", "u2", "u3"))
    # Leave-one-out majorities (the sign of the *other* users' labels):
    #   u1: {A,B} 0 (u2 +1, u3 −1), {A,C} 0, {B,C} −1 (u2 −1, u3 0), {B,D} +1, {A,D} none → 0
    #   u2: {A,B} 0, {A,C} 0, {B,C} +1 (u1 +1, u3 0), {B,D} +1
    #   u3: {A,B} +1, {A,C} +1, {B,C} 0 (u1 +1, u2 −1), {B,D} +1
    # Agreement over shared comparisons (ties score ½): u1 ½ ½ 0 1, u2 ½ ½ 0 1, u3 0 0 ½ 1.
    assert u1["agreement"] == pytest.approx(2 / 4)
    assert u2["agreement"] == pytest.approx(2 / 4)
    assert u3["agreement"] == pytest.approx(1.5 / 4)
    # Counting u3 inside its own majority would have given u1 and u2 3.5/4; only u3 is below ½.
    assert r["minority_users"] == ["u3"]
    # Oracle = each vote predicted by the user's own label; majority = by the leave-one-out majority.
    # u1's votes: A>B ½, A>C ½, B>C twice 0 0, B>D 1, A>D ½ → 2.5/6.
    assert (u1["oracle_acc"], u1["majority_acc"]) == pytest.approx((6 / 6, 2.5 / 6))
    assert (u2["oracle_acc"], u2["majority_acc"]) == pytest.approx((4 / 4, 2 / 4))
    # u3's votes: B>A 0, C>A 0, C>B ½, B>C ½, B>D 1 → 2/5; its own label is a tie on {B,C}: oracle 4/5.
    assert (u3["oracle_acc"], u3["majority_acc"]) == pytest.approx((4 / 5, 2 / 5))
    assert u3["room"] == pytest.approx(0.4)
    assert r["mean_room"] == pytest.approx((3.5 / 6 + 0.5 + 0.4) / 3)


def test_minority_from_train_and_baselines_from_test() -> None:
    """Train: u3 opposes u1 and u2. Test: a new comparison on which u3 agrees with u1 and u2 disagrees."""
    train = [PrefPair(u, "p", c, r, "train") for u, c, r in toy_votes()]
    test = [PrefPair("u1", "q", "E", "F", "test"), PrefPair("u2", "q", "F", "E", "test"),
            PrefPair("u3", "q", "E", "F", "test")]
    out = characterize_splits(PrefData("t", train + test))
    assert out["minority_users"] == ["u3"]
    # On {E,F}: u1's leave-one-out majority is u2 (−1) + u3 (+1) = tie → ½; u2's is +1 +1 → wrong → 0;
    # u3's is u1 (+1) + u2 (−1) = tie → ½. The oracle is 1 for everyone (one vote each).
    assert out["baselines"]["majority_vote"] == {"u1": 0.5, "u2": 0.0, "u3": 0.5}
    assert out["baselines"]["oracle"] == {"u1": 1.0, "u2": 1.0, "u3": 1.0}
    assert out["test"]["n_pairs"] == 3 and out["train"]["n_pairs"] == 15


def test_no_repeats_means_consistency_is_unmeasurable() -> None:
    data = PrefData("t", [PrefPair("a", "p", "x", "y", "train"), PrefPair("b", "p", "y", "x", "train")])
    r = characterize(data)
    assert r["consistency"] is None
    assert r["disagreement"] == 1.0
    # Two users, opposite labels: each one's leave-one-out majority is the other, so both disagree with
    # "everyone else" (agreement 0). A majority that counted the user itself would tie and hide this.
    assert r["per_user"]["a"]["agreement"] == 0.0 and r["minority_users"] == ["a", "b"]


def test_empty_split_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="split 'test' is empty"):
        characterize(toy(), split="test")
