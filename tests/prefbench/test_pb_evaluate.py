"""Evaluation protocol: folds, summaries, tax averaged over users, and the few-shot adaptation curve."""

from __future__ import annotations

import numpy as np
import pytest

from personalign.prefbench.evaluate import adaptation_curve, remap_users, summarize, tax_accuracy, user_folds
from personalign.prefbench.methods import make_method
from personalign.prefbench.methods.base import PairSet


def four_users(opposed: tuple[PairSet, PairSet, np.ndarray]) -> tuple[PairSet, PairSet]:
    """Users 0, 2 share one taste and 1, 3 the opposite (copies of the two opposed users)."""
    train, test, _ = opposed
    def dup(ps: PairSet) -> PairSet:
        return PairSet.concat([ps, PairSet(ps.a, ps.b, ps.users + 2, ps.a_idx, ps.b_idx)])
    return dup(train), dup(test)


def test_folds_partition_users() -> None:
    folds = user_folds(5, 2, seed=0)
    assert len(folds) == 2 and sorted(u for f in folds for u in f) == [0, 1, 2, 3, 4]
    # More folds than users: one user per fold (leave-one-user-out).
    single = user_folds(3, 10, seed=0)
    assert len(single) == 3 and all(len(f) == 1 for f in single)


def test_remap_users_renumbers_in_order(opposed) -> None:
    train, _, _ = opposed
    sub = remap_users(train, [1])
    assert set(sub.users.tolist()) == {0} and len(sub) == len(train.for_user(1))


def test_summary_by_hand() -> None:
    s = summarize({"a": 0.9, "b": 0.5, "c": 0.7}, ["b"])
    assert (s["mean_acc"], s["worst_acc"], s["worst_user"], s["minority_acc"]) == pytest.approx((0.7, 0.5, "b", 0.5))
    assert s["std_acc"] == pytest.approx(np.std([0.9, 0.5, 0.7]))
    assert summarize({"a": 1.0}, [])["minority_acc"] is None


def test_tax_is_averaged_over_users(opposed, fast_train) -> None:
    train, test, _ = opposed
    # "Tax set" = user 0's test comparisons: user 0's model gets them right, user 1's model wrong.
    tax = test.for_user(0)
    cats = np.array(["x"] * len(tax))
    ind = make_method("individual", None, fast_train).fit(train, 2)
    per_user = [np.mean(ind.margins(tax.as_user(u)) > 0) for u in (0, 1)]
    assert tax_accuracy(ind, tax, cats, 2)["x"] == pytest.approx(np.mean(per_user))
    assert per_user[0] > 0.9 and per_user[1] < 0.1


def test_adaptation_curve_improves_with_k(opposed, fast_train) -> None:
    train, test = four_users(opposed)
    out = adaptation_curve(lambda: make_method("personalized", None, fast_train), train, test, 4, [2, 100], 2, seed=0)
    assert set(out["curve"]) == {"2", "100"}
    assert out["curve"]["100"] > 0.9 and out["curve"]["100"] > out["curve"]["2"]
    assert len(out["detail"]) == 4 * 2 and {d["k_used"] for d in out["detail"]} == {2, 100}
    # Vanilla does not adapt: its curve is flat.
    flat = adaptation_curve(lambda: make_method("vanilla", None, fast_train), train, test, 4, [2, 100], 2, seed=0)
    assert flat["curve"]["2"] == flat["curve"]["100"]


def test_featurize_builds_pairsets_in_user_order_with_shared_text_ids() -> None:
    from personalign.prefbench.features import featurize, pair_text
    from personalign.prefbench.schema import PrefData, PrefPair

    data = PrefData("t", [PrefPair("b", "p", "x", "yy", "train"), PrefPair("a", "p", "yy", "x", "train"),
                          PrefPair("a", "q", "zzz", "x", "test")])
    # A deterministic stand-in for the embedder (the text length as a 1-d vector) checks the wiring only.
    feats = featurize(data, lambda texts: np.array([[float(len(t))] for t in texts]), users=["a", "b"])
    train = feats.splits["train"]
    assert feats.users == ["a", "b"] and train.users.tolist() == [1, 0]
    # The same comparison seen by both users shares text ids, in opposite orientation.
    assert (train.a_idx[0], train.b_idx[0]) == (train.b_idx[1], train.a_idx[1])
    assert train.a[0, 0] == len(pair_text("p", "x")) and feats.n_texts == 4
    assert pair_text("a" * 10, "r", max_prompt_chars=4) == "…aaaa\n\nr"
