"""Evaluation protocol: folds, summaries, tax averaged over users, and the few-shot adaptation curve."""

from __future__ import annotations

import numpy as np
import pytest

from personalign.prefbench.evaluate import adaptation_curve, remap_users, sample_per_user, summarize, user_folds
from personalign.prefbench.methods import make_method
from personalign.prefbench.methods.base import PairSet, accuracy


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


def test_slow_methods_are_scored_on_a_seeded_sample_per_user(opposed) -> None:
    _, test, _ = opposed
    sample = sample_per_user(test, 5, seed=0)
    assert [int((sample.users == u).sum()) for u in (0, 1)] == [5, 5]
    assert np.array_equal(sample.a, sample_per_user(test, 5, seed=0).a) and sample_per_user(test, None, 0) is test


def test_summary_by_hand() -> None:
    s = summarize({"a": 0.9, "b": 0.5, "c": 0.7}, ["b"])
    assert (s["mean_acc"], s["worst_acc"], s["worst_user"], s["minority_acc"]) == pytest.approx((0.7, 0.5, "b", 0.5))
    assert s["std_acc"] == pytest.approx(np.std([0.9, 0.5, 0.7]))
    assert summarize({"a": 1.0}, [])["minority_acc"] is None


def distinct_users(n_users: int = 4, dim: int = 8, seed: int = 0) -> tuple[PairSet, PairSet]:
    """Users with independent random linear tastes, each rating its own pool of texts (text ids
    100·u … 100·u + 99), so a set's text ids say whose pairs it holds."""
    rng = np.random.default_rng(seed)
    sets: dict[str, list[PairSet]] = {"train": [], "test": []}
    for u in range(n_users):
        x = rng.normal(size=(100, dim)).astype(np.float32)
        w = rng.normal(size=dim)
        for split, n in (("train", 150), ("test", 100)):
            i, j = rng.integers(0, 100, n), rng.integers(0, 100, n)
            keep = i != j
            i, j = i[keep], j[keep]
            win = x[i] @ w > x[j] @ w
            a, b = np.where(win, i, j), np.where(win, j, i)
            sets[split].append(PairSet(x[a], x[b], np.full(len(a), u), a + 100 * u, b + 100 * u))
    return PairSet.concat(sets["train"]), PairSet.concat(sets["test"]).random_sides(seed=1)


class FitSpy:
    """Builds `personalized` and records the text ids of every set it is fit on."""

    def __init__(self, cfg, log: list[set[int]]):
        self.method, self.log = make_method("personalized", None, cfg), log

    def fit(self, pairs: PairSet, n_users: int, dimensions=None):
        self.log.append(set(pairs.a_idx.tolist()) | set(pairs.b_idx.tolist()))
        return self.method.fit(pairs, n_users, dimensions)


def test_adaptation_curve_improves_with_k(fast_train) -> None:
    train, test = distinct_users()
    fits: list[set[int]] = []
    out = adaptation_curve(lambda: FitSpy(fast_train, fits), train, test, 4, [2, 100], 2, seed=0)
    # No fold's model saw a single text of the users it is then adapted to.
    assert len(fits) == len(out["folds"]) == 2
    for fit_ids, held in zip(fits, out["folds"], strict=True):
        held_ids = {t for h in held for t in range(100 * h, 100 * h + 100)}
        assert fit_ids and not fit_ids & held_ids
    # Tastes are independent, so 2 pairs say little and 100 say much: the curve rises.
    assert set(out["curve"]) == {"2", "100"}
    assert out["curve"]["100"] > 0.85 and out["curve"]["100"] > out["curve"]["2"] + 0.15
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
    assert train.a[0, 0] == len(pair_text("p", "x")) and train.label is None
    # 4 response texts + 2 prompts (embedded alone, for retrieval); the prompt row of a pair is its prompt.
    assert feats.n_texts == 6 and feats.splits["train"].prompt[0, 0] == len("p")
    assert pair_text("a" * 10, "r", max_prompt_chars=4) == "…aaaa\n\nr"


def test_test_pairs_put_the_chosen_response_on_a_random_side() -> None:
    from personalign.prefbench.features import featurize
    from personalign.prefbench.schema import PrefData, PrefPair

    pairs = [PrefPair("u", f"p{i}", f"good {i}", f"bad {i}!!", "test") for i in range(200)]
    pairs.append(PrefPair("u", "t", "x", "y", "train"))
    test = featurize(PrefData("t", pairs), lambda texts: np.array([[float(len(t))] for t in texts])).splits["test"]
    # About half the rows show the chosen ("good", one character shorter) second, and the label says so.
    assert 60 < int((test.labels == -1).sum()) < 140
    assert np.all((test.a[:, 0] < test.b[:, 0]) == (test.labels == 1))
    # "The first slot wins" scores about chance; reading the label, the shorter-wins rule scores 1.
    assert abs(accuracy(np.ones(len(test)), test.labels) - 0.5) < 0.2
    assert accuracy(test.b[:, 0] - test.a[:, 0], test.labels) == 1.0


def test_tax_drop_with_bootstrap_ci_and_not_measurable_at_chance() -> None:
    from personalign.prefbench.evaluate import bootstrap_ci, tax_drop

    cats = np.array(["chat"] * 40 + ["safety"] * 40)
    # chat: the base gets all 40 right, the method 30 → drop 0.25; safety: the base is at chance (20 / 40).
    base = np.concatenate([np.ones(40), np.tile([1.0, 0.0], 20)])
    method = np.concatenate([np.r_[np.ones(30), np.zeros(10)], np.zeros(40)])
    out = tax_drop(base, method, cats, n_boot=500, seed=0)
    chat, safety = out["chat"], out["safety"]
    assert chat["measurable"] and chat["base_acc"] == 1.0 and chat["drop"] == pytest.approx(0.25)
    lo, hi = chat["drop_ci"]
    assert lo < 0.25 < hi and lo > 0.05 and hi < 0.45
    assert not safety["measurable"] and "drop" not in safety and safety["base_ci"][0] <= 0.5 <= safety["base_ci"][1]
    # The CI is the spread of resampled means: a constant has none; and a handful of pairs is never enough.
    assert bootstrap_ci(np.ones(10), 100, 0) == (1.0, 1.0)
    assert not tax_drop(np.ones(5), np.zeros(5), np.array(["chat"] * 5))["chat"]["measurable"]


def test_tax_scores_read_the_labels_and_average_users(opposed, fast_train) -> None:
    from personalign.prefbench.evaluate import tax_scores

    train, test, _ = opposed
    tax = test.for_user(0).random_sides(seed=2)
    ind = make_method("individual", None, fast_train).fit(train, 2)
    scores = tax_scores(ind, tax, 2)
    # User 0's model is right on its own comparisons, user 1's wrong: every pair scores about ½.
    assert abs(scores.mean() - 0.5) < 0.05
    assert np.mean(tax_scores(ind, tax, 1)) > 0.9
