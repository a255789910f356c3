"""Evaluators: one interface (`score(prompts, outputs, references) -> per-output score or None`) over
every judge the comparisons use: rules, authorship, reference similarity, and any `judges.base.Judge`
(the LLM judge, a reward model). Higher is always better; None means "not applicable/unparseable".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from personalign.backends.embedder import Embedder
from personalign.evaluation.authorship import AuthorshipJudge
from personalign.evaluation.similarity import embedding_cosine, rouge_l
from personalign.judges.rules import active_checks, check_text
from personalign.profiles.schema import Constraints, Profile

Score = float | None


class Evaluator(Protocol):
    name: str

    def score(self, prompts: Sequence[str], outputs: Sequence[str], references: Sequence[str | None]) -> list[Score]:
        """One score per output (higher is better), None where the evaluator does not apply."""
        ...


class RulesEvaluator:
    """Share of the profile's active constraint checks an output passes (None when no check is active)."""

    name = "rules"

    def __init__(self, constraints: Constraints):
        self.constraints = constraints

    def score(self, prompts: Sequence[str], outputs: Sequence[str], references: Sequence[str | None]) -> list[Score]:
        if not active_checks(self.constraints):
            return [None] * len(outputs)
        results = [check_text(text, self.constraints) for text in outputs]
        return [sum(c.passed for c in r) / len(r) for r in results]


class AuthorshipEvaluator:
    """P(target author | output) from a fitted `AuthorshipJudge`."""

    name = "authorship"

    def __init__(self, judge: AuthorshipJudge):
        self.judge = judge

    def score(self, prompts: Sequence[str], outputs: Sequence[str], references: Sequence[str | None]) -> list[Score]:
        return list(self.judge.score(list(outputs)))


def _with_reference(outputs: Sequence[str], references: Sequence[str | None]) -> list[int]:
    return [i for i, ref in enumerate(references) if ref]


class ReferenceCosineEvaluator:
    """MiniLM cosine between output and the held-out reference, where one exists."""

    name = "ref_cosine"

    def __init__(self, embedder: Embedder | None = None):
        self.embedder = embedder

    def score(self, prompts: Sequence[str], outputs: Sequence[str], references: Sequence[str | None]) -> list[Score]:
        idx = _with_reference(outputs, references)
        values = embedding_cosine([outputs[i] for i in idx], [references[i] or "" for i in idx], self.embedder)
        scores: list[Score] = [None] * len(outputs)
        for i, v in zip(idx, values, strict=True):
            scores[i] = v
        return scores


class RougeLEvaluator:
    """ROUGE-L F1 between output and the held-out reference, where one exists."""

    name = "rouge_l"

    def score(self, prompts: Sequence[str], outputs: Sequence[str], references: Sequence[str | None]) -> list[Score]:
        return [rouge_l(o, r) if r else None for o, r in zip(outputs, references, strict=True)]


class JudgeEvaluator:
    """Any `personalign.judges.base.Judge` (LLM judge, reward model) as a pointwise evaluator."""

    def __init__(self, judge: Any, profile: Profile | None = None, name: str | None = None):
        self.judge = judge
        self.profile = profile
        self.name = name or f"judge_{getattr(judge, 'name', 'llm')}"

    def score(self, prompts: Sequence[str], outputs: Sequence[str], references: Sequence[str | None]) -> list[Score]:
        results = self.judge.score_many(list(prompts), list(outputs), self.profile)
        return [r.value if r.parsed else None for r in results]


def score_rows(
    rows: list[dict[str, Any]], evaluators: Sequence[Evaluator], references: dict[str, str | None] | None = None
) -> list[dict[str, Any]]:
    """Add `scores: {evaluator: value}` to each output row ({prompt, output, ...}); references keyed by prompt."""
    references = references or {}
    prompts = [r["prompt"] for r in rows]
    outputs = [r["output"] for r in rows]
    refs = [r.get("reference") or references.get(r["prompt"]) for r in rows]
    for evaluator in evaluators:
        values = evaluator.score(prompts, outputs, refs)
        for row, value in zip(rows, values, strict=True):
            row.setdefault("scores", {})[evaluator.name] = value
    return rows


def per_prompt_scores(
    rows: Sequence[dict[str, Any]], evaluator: str, key: str = "prompt"
) -> dict[str, dict[str, float]]:
    """method → {prompt key: mean score over samples}, skipping missing scores (input to win rates)."""
    sums: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        value = (row.get("scores") or {}).get(evaluator)
        if value is None:
            continue
        sums.setdefault(row["method"], {}).setdefault(str(row[key]), []).append(float(value))
    return {m: {k: sum(v) / len(v) for k, v in per.items()} for m, per in sums.items()}


def paired(per_prompt: dict[str, dict[str, float]], a: str, b: str) -> tuple[list[str], list[float], list[float]]:
    """Prompts both methods were scored on, in a stable order, with their paired scores."""
    keys = sorted(set(per_prompt.get(a, {})) & set(per_prompt.get(b, {})))
    return keys, [per_prompt[a][k] for k in keys], [per_prompt[b][k] for k in keys]
