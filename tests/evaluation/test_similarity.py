"""Reference similarity: ROUGE-L against hand-computed values, embedding cosine ordering."""

from __future__ import annotations

import pytest

from personalign.evaluation.similarity import embedding_cosine, rouge_l


def test_rouge_l_matches_the_longest_common_subsequence_by_hand():
    # LCS("the cat sat on the mat", "the cat is on the mat") = "the cat on the mat" = 5 of 6 tokens each side.
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # 2-token LCS ("a c") of a 3-token candidate and a 4-token reference: P=2/3, R=2/4, F=2PR/(P+R)=4/7.
    assert rouge_l("a b c", "a x c y") == pytest.approx(4 / 7)
    assert rouge_l("identical words here", "identical words here") == pytest.approx(1.0)
    assert rouge_l("alpha beta", "gamma delta") == 0.0


def test_embedding_cosine_ranks_a_paraphrase_above_an_unrelated_text():
    ref = "The central bank raised interest rates to fight inflation."
    close, far = embedding_cosine(
        ["The central bank increased rates to curb rising prices.", "My cat likes to sleep in the sun."], [ref, ref]
    )
    assert close > far
    assert embedding_cosine([ref], [ref])[0] == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError):
        embedding_cosine(["a"], [])
