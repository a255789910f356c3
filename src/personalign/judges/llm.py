"""LLM-as-judge through any generation backend, in the Prometheus absolute and relative grading formats.

Pointwise: "Feedback: ... [RESULT] n" with n in 1..5. Pairwise: Prometheus 2's official relative format,
"... [RESULT] A|B" (`RELATIVE_TEMPLATE`); `ties=True` switches to a variant that also offers "tie"
(`RELATIVE_TEMPLATE_WITH_TIE`), and only then is a "tie" answer accepted: under the official format it
is outside the format and counts as unparseable. Each pair is asked in both orders (a, b) and (b, a) and
combined (`judges.base.combine_orders`), so a judge that favours a position yields an order-disagreement
tie in either format, and the share of such pairs is its position-bias rate. Answers without a
recognizable verdict are `None` (counted by callers), never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from personalign.backends.base import GenerationBackend
from personalign.config import SamplingConfig
from personalign.judges.base import Judge, JudgeScore, Label, Verdict, combine_orders, swap_label
from personalign.profiles.schema import Profile

ABSOLUTE_TEMPLATE = """###Task Description:
An instruction, a response to evaluate, and a score rubric representing an evaluation criterion are given.
1. Write a short feedback that assesses the quality of the response strictly based on the given score rubric.
2. After the feedback, write a score that is an integer between 1 and 5, referring to the score rubric.
3. The output format should look as follows: "Feedback: (feedback for criteria) [RESULT] (an integer between 1 and 5)"
4. Please do not generate any other opening, closing, and explanations.

###The instruction to evaluate:
{instruction}

###Response to evaluate:
{response}

###Score Rubrics:
{rubric}

###Feedback: """

# Prometheus 2's relative-grading prompt (prometheus-eval `RELATIVE_PROMPT_WO_REF`), wording kept as
# published (including its grammar): the judge models were trained on exactly this text.
RELATIVE_TEMPLATE = """###Task Description:
An instruction (might include an Input inside it), a response to evaluate, and a score rubric representing a \
evaluation criteria are given.
1. Write a detailed feedback that assess the quality of two responses strictly based on the given score rubric, \
not evaluating in general.
2. After writing a feedback, choose a better response between Response A and Response B. You should refer to the \
score rubric.
3. The output format should look as follows: "(write a feedback for criteria) [RESULT] (A or B)"
4. Please do not generate any other opening, closing, and explanations.

###Instruction:
{instruction}

###Response A:
{response_a}

###Response B:
{response_b}

###Score Rubric:
{rubric}

###Feedback: """

# personalign's variant with a tie option (`LLMJudge(ties=True)`); not a format Prometheus was trained on.
RELATIVE_TEMPLATE_WITH_TIE = RELATIVE_TEMPLATE.replace(
    "choose a better response between Response A and Response B.",
    "choose a better response between Response A and Response B, or tie if they are equally good.",
).replace("[RESULT] (A or B)", "[RESULT] (A or B or tie)")

# Used when neither a profile nor the data item supplies a rubric (general-purpose validation sets).
GENERIC_RUBRIC = """[Does the response follow the instruction and help the user accurately, honestly and harmlessly?]
Score 1: The response ignores the instruction, is wrong, harmful or incoherent.
Score 2: The response addresses the instruction only partly and has major errors or omissions.
Score 3: The response addresses the instruction with some errors, padding or missing details.
Score 4: The response follows the instruction well with only minor issues.
Score 5: The response follows the instruction fully; it is accurate, clear, complete and appropriate."""

_RESULT_SCORE = re.compile(r"\[\s*RESULT\s*\]\s*[:(\[]?\s*([1-5])(?![0-9])", re.IGNORECASE)
_FALLBACK_SCORE = re.compile(r"\b(?:score|rating)\s*(?:is|of|:|=)\s*\(?([1-5])(?:\s*/\s*5)?(?![0-9.])", re.IGNORECASE)
_RESULT_LABEL = re.compile(r"\[\s*RESULT\s*\]\s*[:(\[]?\s*(?:response\s+)?(A|B|tie)\b", re.IGNORECASE)
_FALLBACK_LABEL = re.compile(r"\bresponse\s+(A|B)\s+is\s+(?:better|preferred|superior)\b", re.IGNORECASE)


def profile_rubric(profile: Profile) -> str:
    """A Prometheus-style 1..5 rubric from the profile's criteria, penalties and hard failures."""
    rubric = profile.rubric
    criteria = "; ".join(f"{c.name} (weight {c.weight:g}): {c.description}" for c in rubric.criteria)
    question = f"[Does the response {profile.task} the way {profile.name} would? Criteria: {criteria or 'style'}]"
    hard = "; ".join(rubric.hard_failures) or "not doing the task at all"
    penalties = "; ".join(rubric.penalties) or "obvious style slips"
    return "\n".join([
        question,
        f"Score 1: A hard failure ({hard}).",
        f"Score 2: Does the task but misses most criteria, or shows several penalties ({penalties}).",
        "Score 3: Meets about half of the criteria; at most one penalty.",
        "Score 4: Meets nearly all criteria with minor slips and no penalties.",
        "Score 5: Meets every criterion; no penalties; reads exactly like the person.",
    ])


def parse_absolute(text: str) -> tuple[int | None, str]:
    """(score 1..5 or None, feedback). The last "[RESULT] n" wins; a plain "Score: n" is the only fallback."""
    matches = _RESULT_SCORE.findall(text) or _FALLBACK_SCORE.findall(text)
    feedback = re.split(r"\[\s*RESULT\s*\]", text, flags=re.IGNORECASE)[0]
    feedback = re.sub(r"^\s*feedback\s*:\s*", "", feedback, flags=re.IGNORECASE).strip()
    return (int(matches[-1]) if matches else None), feedback


def parse_relative(text: str, ties: bool = False) -> tuple[Label | None, str]:
    """(A | B | tie | None, feedback). Explicit "[RESULT] X" first, then "Response X is better".

    A "tie" answer is a verdict only with `ties=True` (the format offered it); otherwise it is None.
    """
    matches = _RESULT_LABEL.findall(text) or _FALLBACK_LABEL.findall(text)
    feedback = re.split(r"\[\s*RESULT\s*\]", text, flags=re.IGNORECASE)[0]
    feedback = re.sub(r"^\s*feedback\s*:\s*", "", feedback, flags=re.IGNORECASE).strip()
    if not matches:
        return None, feedback
    token = matches[-1]
    if token.lower() == "tie" and not ties:
        return None, feedback
    label: Label = "tie" if token.lower() == "tie" else ("A" if token.upper() == "A" else "B")
    return label, feedback


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + " …"


class LLMJudge(Judge):
    """A judge model behind any `GenerationBackend`, greedy-decoded, in Prometheus formats."""

    name = "llm"
    order_sensitive = True

    def __init__(self, backend: GenerationBackend, max_new_tokens: int = 128, max_chars: int = 2000,
                 progress: bool = False, ties: bool = False):
        self.backend = backend
        self.ties = ties  # offer "tie" in the pairwise prompt (off: Prometheus' official A/B format)
        self.relative_template = RELATIVE_TEMPLATE_WITH_TIE if ties else RELATIVE_TEMPLATE
        self.sampling = SamplingConfig(temperature=0.0, max_new_tokens=max_new_tokens, n=1)
        self.max_chars = max_chars  # long items are clipped: small judges lose the format on long inputs
        self.progress = progress

    def _rubric(self, profile: Profile | None, override: str | None) -> str:
        if override:
            return override
        return profile_rubric(profile) if profile is not None else GENERIC_RUBRIC

    def _ask(self, texts: list[str]) -> list[str]:
        replies = self.backend.generate([[{"role": "user", "content": t}] for t in texts], self.sampling,
                                        progress=self.progress)
        return [r[0] for r in replies]

    def score_many(
        self, prompts: Sequence[str], outputs: Sequence[str], profile: Profile | None = None,
        rubrics: Sequence[str | None] | None = None,
    ) -> list[JudgeScore]:
        rubrics = rubrics or [None] * len(prompts)
        texts = [
            ABSOLUTE_TEMPLATE.format(instruction=_clip(p, self.max_chars), response=_clip(o, self.max_chars),
                                     rubric=self._rubric(profile, r))
            for p, o, r in zip(prompts, outputs, rubrics, strict=True)
        ]
        scores = []
        for reply in self._ask(texts):
            value, feedback = parse_absolute(reply)
            scores.append(JudgeScore(None if value is None else float(value), feedback, value is not None, reply))
        return scores

    def compare_many(
        self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str], profile: Profile | None = None,
        rubrics: Sequence[str | None] | None = None,
    ) -> list[Verdict]:
        n = len(prompts)
        rubrics = rubrics or [None] * n

        def render(p: str, x: str, y: str, r: str | None) -> str:
            return self.relative_template.format(
                instruction=_clip(p, self.max_chars), response_a=_clip(x, self.max_chars),
                response_b=_clip(y, self.max_chars), rubric=self._rubric(profile, r),
            )

        forward = [render(p, x, y, r) for p, x, y, r in zip(prompts, a, b, rubrics, strict=True)]
        backward = [render(p, y, x, r) for p, x, y, r in zip(prompts, a, b, rubrics, strict=True)]
        replies = self._ask(forward + backward)
        verdicts = []
        for i in range(n):
            first, feedback = parse_relative(replies[i], self.ties)
            second_raw, _ = parse_relative(replies[n + i], self.ties)
            second = swap_label(second_raw)  # the backward ask named b "A"; map back to the caller's names
            verdicts.append(Verdict(combine_orders(first, second), [first, second], feedback))
        return verdicts
