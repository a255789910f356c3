"""Constraint checks on crafted texts, and compliance as one call."""

from __future__ import annotations

from personalign.judges.rules import check_text, compliance, count_sentences, count_words
from personalign.profiles import Constraints

EMAIL = Constraints(
    sign_off="Warmly,\nMaya", banned_substrings=["—"], min_words=10, max_words=60, no_bullets=True,
    no_placeholders=True, single_paragraph_max_sentences=3,
)

GOOD = "Hi Sam,\n\nThank you for the note. I can meet on Friday at noon. See you then!\n\nWarmly,\nMaya"


def results(text: str) -> dict[str, bool]:
    return {r.name: r.passed for r in check_text(text, EMAIL)}


def test_a_good_email_passes_every_check():
    assert all(results(GOOD).values())
    assert set(results(GOOD)) == {
        "sign_off", "banned_substrings", "length", "no_bullets", "no_placeholders", "single_paragraph"
    }


def test_each_violation_fails_exactly_its_check():
    cases = {
        "sign_off": GOOD.replace("Warmly,\nMaya", "Best,\nMaya"),
        "banned_substrings": GOOD.replace("note. I", "note — I"),
        "length": "Hi Sam,\n\nThanks!\n\nWarmly,\nMaya",
        "no_bullets": GOOD.replace("I can meet", "\n- I can meet"),
        "no_placeholders": GOOD.replace("Sam", "[Recipient Name]"),
        "single_paragraph": GOOD.replace("note. I can", "note.\n\nI can"),
    }
    for check, text in cases.items():
        failed = {name for name, ok in results(text).items() if not ok}
        assert failed == {check}, (check, failed)


def test_sign_off_tolerates_indentation_and_trailing_space():
    assert results(GOOD.replace("Warmly,\nMaya", "Warmly,\n  Maya  \n"))["sign_off"]


def test_long_emails_may_have_several_paragraphs():
    text = "Hi Sam,\n\nOne. Two. Three.\n\nFour. Five.\n\nWarmly,\nMaya"
    assert results(text)["single_paragraph"]


def test_counts():
    assert count_words("It's a well-known fact, isn't it?") == 6
    assert count_sentences("One. Two! Three? Four...") == 4


def test_compliance_rate_and_per_check_rates():
    bad = GOOD.replace("Warmly,\nMaya", "Cheers")
    report = compliance([GOOD, GOOD, bad, bad.replace("note.", "note —")], EMAIL)
    assert report.n == 4
    assert report.rate == 0.5
    assert report.per_check["sign_off"] == 0.5
    assert report.per_check["banned_substrings"] == 0.75
    assert report.failures[0] == []
    assert report.failures[2] == ["sign_off: does not end with 'Warmly,\\nMaya'"]


def test_no_constraints_means_no_checks():
    assert check_text("anything", Constraints()) == []
    assert compliance(["a"], Constraints()).rate == 1.0
