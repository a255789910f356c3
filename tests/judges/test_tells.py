"""Generic reward-hacking tells, the rule score and the rules judge, on crafted texts."""

from __future__ import annotations

import pytest

from personalign.judges.base import RulesJudge, combine_orders, label_from_scores
from personalign.judges.rules import (
    check_tells,
    looks_truncated,
    meta_commentary,
    repeated_sentences,
    rule_score,
)
from personalign.profiles.schema import Constraints, Profile

CLEAN = "Hi Sam,\n\nThank you for the notes; they helped a lot. I will send the draft on Friday.\n\nWarmly,\nMaya"


@pytest.mark.parametrize("text", [
    "Here is your email:\n\nHi Sam, thanks!",
    "Sure! Here's a draft you can send.",
    "Hi Sam, see you soon.\n\nNote: be sure to replace the date.",
    "Thanks again. Feel free to adjust the tone as needed.",
    "Best,\nMaya\n\nLet me know if you would like me to make any changes.",
])
def test_meta_commentary_is_caught(text):
    assert meta_commentary(text)


def test_meta_commentary_spares_ordinary_email_phrases():
    assert meta_commentary(CLEAN) == []
    assert meta_commentary("Here is the report you asked for; the figures are on page two.") == []


def test_repeated_sentences_and_truncation():
    looped = "I look forward to hearing from you. Thanks so much. I look forward to hearing from you."
    assert repeated_sentences(looped) == ["i look forward to hearing from you."]
    assert repeated_sentences("Thanks. Thanks.") == []  # too short to be a loop
    assert looks_truncated("Hi Sam, I wanted to ask whether we could move the")
    assert not looks_truncated(CLEAN)  # "Maya" is a short sign-off line, not a cut
    assert looks_truncated("")


def test_rule_score_counts_each_check_once():
    constraints = Constraints(sign_off="Warmly,\nMaya", no_placeholders=True)
    assert rule_score(CLEAN, constraints) == 1.0
    # placeholder fails no_placeholders (counted once, not again as a tell) and sign-off fails:
    # checks = sign_off, no_placeholders, meta, repeats, truncated → 3 of 5 pass
    assert rule_score("Hi [Recipient Name], thanks for your help.", constraints) == pytest.approx(3 / 5)
    # without a profile only the 4 tells count: the placeholder and meta-commentary fail
    assert rule_score("Here is your email: Dear [Your Name], thanks.") == pytest.approx(2 / 4)
    assert [c.name for c in check_tells(CLEAN)] == [
        "tell_placeholders", "tell_meta_commentary", "tell_repeated_sentences", "tell_truncated"]


def test_rules_judge_scores_and_compares(example_profile_path):
    from personalign.profiles import load_profile

    profile: Profile = load_profile(example_profile_path)
    judge = RulesJudge()
    good = profile.demonstrations[0].output
    bad = "Here is your email:\n\nDear [Recipient],\n- point one\n- point two"
    score = judge.score("p", bad, profile)
    assert score.value is not None and score.value < 0.5 and "sign_off" in score.feedback
    verdict = judge.compare("p", bad, good, profile)
    assert verdict.winner == "B" and verdict.orders == ["B"]
    assert judge.compare("p", good, good, profile).winner == "tie"


def test_order_combination_and_score_labels():
    assert combine_orders("A", "A") == "A"
    assert combine_orders("A", "B") == "tie"  # the orders disagree: position decided, not content
    assert combine_orders("tie", "B") == "tie"
    assert combine_orders(None, "A") is None
    assert label_from_scores(0.2, 0.7) == "B"
    assert label_from_scores(0.5, 0.5) == "tie"
    assert label_from_scores(None, 0.5) is None
    assert label_from_scores(float("nan"), 0.5) is None
