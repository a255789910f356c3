"""The authorship judge separates two toy authors and measures its AUC on held-out texts only."""

from __future__ import annotations

import random

import pytest

from personalign.errors import PersonalignError
from personalign.evaluation.authorship import AuthorshipJudge, fit_author_judge

SAILOR = ["harbor", "anchor", "tide", "gale", "mast", "rigging", "starboard", "keel", "voyage", "compass", "brine",
          "gull"]
BAKER = ["flour", "oven", "dough", "yeast", "crust", "butter", "whisk", "sugar", "knead", "loaf", "pastry", "vanilla"]
GLUE = ["the", "a", "and", "of", "to", "in", "it", "was", "with", "on"]


def toy_texts(vocab: list[str], n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(vocab) if rng.random() < 0.5 else rng.choice(GLUE) for _ in range(40)).capitalize() + "."
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def pools():
    return {"train": {0: toy_texts(SAILOR, 12, 1), 1: toy_texts(BAKER, 12, 2)},
            "heldout": {0: toy_texts(SAILOR, 8, 3), 1: toy_texts(BAKER, 8, 4)}}


def test_judge_separates_two_toy_authors_on_held_out_texts(pools):
    judge = fit_author_judge(0, pools["train"], pools["heldout"])  # MiniLM + char n-grams, calibrated
    assert judge.validity is not None
    assert judge.validity.auc > 0.9
    assert (judge.validity.n_pos, judge.validity.n_neg) == (8, 8)
    assert (judge.validity.n_train_pos, judge.validity.n_train_neg) == (12, 12)
    sailor, baker = judge.score([pools["heldout"][0][0], pools["heldout"][1][0]])
    assert 0.0 <= baker < 0.5 < sailor <= 1.0
    assert "held-out ROC-AUC" in judge.validity.line() and "[ok]" in judge.validity.line()


def test_validity_refuses_texts_the_judge_trained_on(pools):
    judge = AuthorshipJudge(embedder=None).fit(pools["train"][0], pools["train"][1])
    with pytest.raises(PersonalignError, match="trained on 1 of the"):
        judge.evaluate([pools["train"][0][0], *pools["heldout"][0]], pools["heldout"][1])
    # a re-spaced, re-cased copy of a training text is still that text
    with pytest.raises(PersonalignError, match="trained on 1 of the"):
        judge.evaluate([" " + pools["train"][0][0].upper() + "\n", *pools["heldout"][0]], pools["heldout"][1])
    # Same judge, held-out texts only: accepted, and chance-level texts would give ~0.5, not this.
    assert judge.evaluate(pools["heldout"][0], pools["heldout"][1]).auc > 0.9


def test_judge_with_no_signal_is_flagged_not_valid():
    # Both "authors" draw from one vocabulary: no real separation, so the held-out AUC must not look valid.
    mixed = SAILOR + BAKER
    train = {0: toy_texts(mixed, 12, 5), 1: toy_texts(mixed, 12, 6)}
    heldout = {0: toy_texts(mixed, 30, 7), 1: toy_texts(mixed, 30, 8)}
    judge = fit_author_judge(0, train, heldout, embedder=None)
    assert judge.validity is not None and judge.validity.auc < 0.75
    assert "[ok]" not in judge.validity.line()


def test_too_few_texts_is_one_clear_error():
    with pytest.raises(PersonalignError, match="at least 2 texts"):
        AuthorshipJudge(embedder=None).fit(["only one"], ["x", "y"])
