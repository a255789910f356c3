"""Reference similarity: embedding cosine and ROUGE-L between an output and the person's own held-out text."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from personalign.backends.embedder import Embedder, get_embedder


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 (longest common subsequence of stemmed tokens), via Google's `rouge-score` package."""
    from rouge_score import rouge_scorer

    return float(_scorer(rouge_scorer).score(reference, candidate)["rougeL"].fmeasure)


_SCORER = None


def _scorer(module):  # one scorer per process: building it loads the stemmer
    global _SCORER
    if _SCORER is None:
        _SCORER = module.RougeScorer(["rougeL"], use_stemmer=True)
    return _SCORER


def embedding_cosine(
    candidates: Sequence[str], references: Sequence[str], embedder: Embedder | None = None
) -> list[float]:
    """Cosine similarity of each candidate to its reference in MiniLM space (vectors are unit-norm)."""
    if len(candidates) != len(references):
        raise ValueError("candidates and references must have the same length")
    if not candidates:
        return []
    embedder = embedder or get_embedder()
    a = embedder.encode(list(candidates))
    b = embedder.encode(list(references))
    return [float(x) for x in np.sum(a * b, axis=1)]
