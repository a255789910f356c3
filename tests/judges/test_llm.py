"""LLM judge: Prometheus parsing, both-order pairwise combination, position bias and unparseable counting.

The backend is a scripted fake (allowed for parsing tests): it answers from the judge prompt's text.
"""

from __future__ import annotations

import re

import pytest

from personalign.backends.base import GenerationBackend
from personalign.judges.llm import (
    RELATIVE_TEMPLATE,
    RELATIVE_TEMPLATE_WITH_TIE,
    LLMJudge,
    parse_absolute,
    parse_relative,
    profile_rubric,
)
from personalign.judges.validate import agreement_metrics


class ScriptedBackend(GenerationBackend):
    name = "scripted"

    def __init__(self, answer):
        self.answer = answer
        self.seen: list[str] = []

    def generate(self, conversations, sampling, progress=False):
        texts = [c[-1]["content"] for c in conversations]
        self.seen += texts
        return [[self.answer(t)] for t in texts]

    def logprobs(self, conversations, completions):
        raise NotImplementedError


def _responses(prompt: str) -> tuple[str, str]:
    a = re.search(r"###Response A:\n(.*?)\n\n###Response B:", prompt, re.DOTALL).group(1)
    b = re.search(r"###Response B:\n(.*?)\n\n###Score Rubric:", prompt, re.DOTALL).group(1)
    return a, b


def content_judge(prompt: str) -> str:
    a, b = _responses(prompt)
    if "GOOD" in a and "GOOD" in b:
        return "Feedback: both fine. [RESULT] tie"
    return "Feedback: one is better. [RESULT] " + ("A" if "GOOD" in a else "B")


@pytest.mark.parametrize(("text", "expected"), [
    ("Feedback: clear and warm. [RESULT] 4", 4),
    ("Feedback: ok [RESULT] (5)", 5),
    ("Feedback: meh.\n[Result]: 2", 2),
    ("The response is fine. Score: 3/5", 3),
    ("Feedback: I would say a 4 or maybe 5.", None),  # no verdict marker: unparseable, not guessed
    ("[RESULT] 7", None),
    ("[RESULT] 10", None),
])
def test_parse_absolute(text, expected):
    assert parse_absolute(text)[0] == expected


def test_parse_absolute_keeps_the_feedback():
    assert parse_absolute("Feedback: warm but long. [RESULT] 3")[1] == "warm but long."


@pytest.mark.parametrize(("text", "expected"), [
    ("Feedback: A is concise. [RESULT] A", "A"),
    ("Feedback: ... [RESULT] (B)", "B"),
    ("[RESULT] Response B", "B"),
    ("Response A is better because it is shorter.", "A"),
    ("Both have merits.", None),
])
def test_parse_relative(text, expected):
    assert parse_relative(text)[0] == expected == parse_relative(text, ties=True)[0]


def test_a_tie_answer_counts_only_when_ties_are_offered():
    assert parse_relative("[RESULT] Tie")[0] is None  # outside the official A/B format: unparseable
    assert parse_relative("[RESULT] Tie", ties=True)[0] == "tie"


def test_default_prompt_is_the_official_ab_format_and_ties_are_opt_in():
    official = LLMJudge(ScriptedBackend(content_judge))
    official.compare_many(["q"], ["GOOD x"], ["GOOD y"])
    assert official.backend.seen[0].startswith(RELATIVE_TEMPLATE.split("{instruction}")[0])
    assert "[RESULT] (A or B)\"" in official.backend.seen[0] and "tie" not in official.backend.seen[0].lower()
    # both GOOD: the scripted judge answers "tie", which the official format does not allow
    assert official.compare_many(["q"], ["GOOD x"], ["GOOD y"])[0].winner is None
    with_ties = LLMJudge(ScriptedBackend(content_judge), ties=True)
    assert with_ties.compare_many(["q"], ["GOOD x"], ["GOOD y"])[0].winner == "tie"
    assert "or tie" in with_ties.backend.seen[0] and with_ties.backend.seen[0].startswith(
        RELATIVE_TEMPLATE_WITH_TIE.split("{instruction}")[0])


def test_pairwise_asks_both_orders_and_maps_the_second_back():
    backend = ScriptedBackend(content_judge)
    judge = LLMJudge(backend, ties=True)
    verdicts = judge.compare_many(["q", "q", "q"], ["GOOD one", "bad", "GOOD x"], ["bad", "GOOD two", "GOOD y"])
    assert [v.winner for v in verdicts] == ["A", "B", "tie"]
    assert [v.orders for v in verdicts] == [["A", "A"], ["B", "B"], ["tie", "tie"]]
    assert all(v.position_consistent for v in verdicts)
    assert len(backend.seen) == 6
    # the second prompt of a pair shows the outputs swapped
    assert _responses(backend.seen[0]) == ("GOOD one", "bad")
    assert _responses(backend.seen[3]) == ("bad", "GOOD one")


def test_a_position_biased_judge_gets_ties_and_a_full_bias_rate():
    judge = LLMJudge(ScriptedBackend(lambda prompt: "Feedback: first is best. [RESULT] A"))
    verdicts = judge.compare_many(["q"] * 4, ["GOOD", "bad", "GOOD", "bad"], ["bad", "GOOD", "bad", "GOOD"])
    assert [v.winner for v in verdicts] == ["tie"] * 4
    metrics = agreement_metrics(["A", "B", "A", "B"], verdicts)
    assert metrics["position_bias_rate"] == 1.0
    assert metrics["accuracy"] == 0.0 and metrics["tie_rate"] == 1.0


def test_unparseable_answers_are_counted_not_mapped():
    answers = iter(["[RESULT] A", "no idea", "[RESULT] B", "[RESULT] A"])
    judge = LLMJudge(ScriptedBackend(lambda prompt: next(answers)))
    verdicts = judge.compare_many(["q", "q"], ["x", "y"], ["z", "w"])
    # forward answers: A, no idea; backward: B (→ A), A (→ B)
    assert verdicts[0].winner == "A"
    assert verdicts[1].winner is None and verdicts[1].orders == [None, "B"]
    metrics = agreement_metrics(["A", "A"], verdicts)
    assert metrics["unparseable_rate"] == 0.5 and metrics["accuracy"] == 0.5


def test_pointwise_uses_the_profile_rubric(example_profile_path):
    from personalign.profiles import load_profile

    profile = load_profile(example_profile_path)
    backend = ScriptedBackend(lambda prompt: "Feedback: fine. [RESULT] 4" if "Maya" in prompt else "garbage")
    judge = LLMJudge(backend)
    score = judge.score("Write to Sam", "Hi Sam, thanks.", profile)
    assert score.value == 4.0 and score.parsed and score.feedback == "fine."
    assert "Score 5:" in backend.seen[0] and "warmth" in backend.seen[0]
    assert "Signed with a name other than Maya" in profile_rubric(profile)
    bare = judge.score("Write to Sam", "Hi Sam.", None)  # generic rubric: the fake answers garbage
    assert bare.value is None and not bare.parsed
