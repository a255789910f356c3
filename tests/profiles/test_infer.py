"""profile infer on hand-made texts: a fixed sign-off is found, none when texts disagree; ranges, markers,
greeting and wrapping rules; prompt derivation; reading JSONL/.txt/.eml; validity on three made-up people."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from personalign.errors import DataError
from personalign.judges.rules import check_text
from personalign.profiles.infer import (
    InferConfig,
    derive_prompt,
    infer_constraints,
    infer_profile,
    read_texts,
    split_greeting,
    unseen_part,
    validity,
)

TOPICS = ["the budget", "the offsite", "the new hire", "the client call", "the quarterly report", "the audit",
          "the move", "the launch", "the vendor", "the training"]


def signed(i: int, closing: str = "Thanks,\nMira") -> str:
    words = " ".join(["more"] * (i * 3))
    return f"Hi Sam,\n\nQuick note about {TOPICS[i]}. It is on track and I will send {words} details soon.\n\n{closing}"


def test_a_fixed_sign_off_is_found_with_its_range_and_rules():
    texts = [signed(i) for i in range(10)]
    inference = infer_constraints(texts, InferConfig(min_texts_for_ban=5))
    c = inference.constraints
    assert c.sign_off == "Thanks,\nMira"  # both closing lines, not only the name
    assert c.min_words is not None and c.max_words is not None
    assert c.min_words <= min(len(t.split()) - 2 for t in texts) and c.max_words >= 45
    assert c.no_bullets and "—" in c.banned_substrings and "!" in c.banned_substrings
    assert any("'Hi <first name>,'" in rule for rule in inference.rules)
    assert all(r.passed for t in texts for r in check_text(t, c))  # the texts pass what was inferred from them


def test_no_common_sign_off_yields_none():
    closings = ["Thanks,\nMira", "Best,\nM", "Cheers", "Talk soon,\nMira K.", "Mira", "-M", "Regards,\nMira",
                "Later!", "Thank you so much,\nMira", "xo"]
    texts = [signed(i, closing) for i, closing in enumerate(closings)]
    inference = infer_constraints(texts)
    assert inference.constraints.sign_off is None
    assert not any(rule.startswith("Sign off") for rule in inference.rules)
    # Too few texts for 'never used' to mean anything: nothing banned under the default threshold.
    assert inference.constraints.banned_substrings == []
    # A marker the texts do use is never banned.
    assert "!" not in infer_constraints(texts, InferConfig(min_texts_for_ban=5)).constraints.banned_substrings


def test_bullets_and_wrapping_are_read_from_the_texts():
    listy = [f"Hi,\n\nTo do for {t}:\n- one\n- two\n\nThanks,\nMira" for t in TOPICS]
    assert infer_constraints(listy).constraints.no_bullets is False
    line = "We should meet about the plan next week since the numbers changed a lot"  # 71 characters
    wrapped = [f"{line}\n{line}\n{line}\nend of {t}." for t in TOPICS]
    rules = infer_constraints(wrapped).rules
    assert any(rule.startswith("Hard-wrap lines at about 71") for rule in rules)
    assert not any(rule.startswith("Hard-wrap") for rule in infer_constraints([signed(i) for i in range(10)]).rules)


def test_prompt_derivation_on_a_hand_example():
    text = "John,\n\nWould you confirm you have\nhad the conversations with Dan? I need it for my files.\n\nMichelle"
    assert split_greeting(text)[0] == "John,"
    prompt, given = derive_prompt(text, subject="RE: Entelligence")
    assert given == "Would you confirm you have had the conversations with Dan?"
    assert prompt == ('Write a reply email about "Entelligence" that starts with the following: '
                      "Would you confirm you have had the conversations with Dan?")
    assert derive_prompt("Lunch is at noon. Bring chips.", subject="")[0] == \
        "Write an email that starts with the following: Lunch is at noon."
    # Scoring sees only what the prompt did not give away.
    assert unseen_part(text, given) == "John, I need it for my files. Michelle"


def test_read_texts_from_jsonl_txt_and_eml(tmp_path: Path):
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text(json.dumps({"body": "Hello there.", "subject": "Hi"}) + "\n" + json.dumps({"text": "Two."}) + "\n")
    assert [(t.text, t.subject) for t in read_texts(jsonl)] == [("Hello there.", "Hi"), ("Two.", None)]
    folder = tmp_path / "mail"
    folder.mkdir()
    (folder / "a.txt").write_text("Plain text.\n")
    (folder / "b.eml").write_text("From: m@x.org\nSubject: Lunch\nContent-Type: text/plain\n\nSee you at noon.\n")
    assert [(t.text, t.subject) for t in read_texts(folder)] == [("Plain text.", None), ("See you at noon.", "Lunch")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"message": "x"}) + "\n")
    with pytest.raises(DataError, match="line 1: no text field"):
        read_texts(bad)
    with pytest.raises(DataError, match="not found"):
        read_texts(tmp_path / "missing")


def test_infer_profile_makes_a_valid_editable_profile():
    texts = read_like([signed(i) for i in range(8)])
    profile, _ = infer_profile(texts[:6], name="Mira K", eval_texts=texts[6:])
    assert len(profile.demonstrations) == 6 and len(profile.eval_prompts) == 2
    assert profile.demonstrations[0].prompt.startswith("Write an email that starts with the following: Quick note")
    assert profile.eval_prompts[0].reference == texts[6].text
    assert profile.constraints.sign_off == "Thanks,\nMira"


def test_a_held_out_text_repeating_a_demonstration_is_left_out_of_the_eval_prompts():
    # A resent email: same text (so same derived prompt) on both sides. Profile() would refuse it with a
    # validation error; infer leaves it out of the eval prompts and says so in the evidence.
    texts = read_like([signed(i) for i in range(6)])
    resent = read_like([signed(2), signed(7)])
    profile, inference = infer_profile(texts, eval_texts=resent)
    assert [p.reference for p in profile.eval_prompts] == [signed(7)]
    assert inference.evidence["eval_prompts"].startswith("1 held-out text(s) left out")


def read_like(texts: list[str]):
    from personalign.profiles.infer import SourceText

    return [SourceText(t) for t in texts]


def test_validity_separates_people_with_distinct_habits():
    people = {
        "mira": [signed(i % 10) for i in range(20)],
        "omar": [f"Team - {TOPICS[i % 10]} moved to Friday. Ping me with questions!\n\nO." for i in range(20)],
        "lee": [f"hey, {TOPICS[i % 10]} is done; see the doc\n\n- Lee" for i in range(20)],
    }
    result = validity(people, n_infer=10, seed=0)
    for person, stats in result.items():
        assert stats["own_pass"] == 1.0, person
        assert stats["others_pass"] == 0.0, person
        assert stats["n_heldout"] == 10 and stats["n_others"] == 40
