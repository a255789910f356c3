"""RAG: `rag-vote`'s similarity-weighted vote by hand; `rag`'s retrieval by prompt, Dong et al.'s prompt,
and the in-context LLM plumbing on a tiny random LM."""

from __future__ import annotations

import numpy as np
import pytest

from personalign.prefbench.methods.base import PairSet
from personalign.prefbench.methods.rag import RAG, RAGOptions, split_texts
from personalign.prefbench.methods.rag_llm import build_prompt
from personalign.prefbench.methods.rag_vote import RAGVote, RAGVoteOptions

E1, E2, E3 = np.eye(3, dtype=np.float32)


def test_vote_by_hand() -> None:
    # Memory of user 0: preferred e1 over e2 (direction d = e1 − e2), and e3 over e2.
    memory = PairSet(np.stack([E1, E3]), np.stack([E2, E2]), [0, 0])
    rag = RAGVote(RAGVoteOptions(k=2, retrieval="pair")).fit(memory, 1)
    # Query (e1, e2) repeats the first memory: pair similarity 1 and cos(d, d1) = 1; the second memory has
    # pair similarity cos(e1+e2, e3+e2)/2 = 1/2 and vote cos(e1−e2, e3−e2) = 1/2.
    # margin = (1·1 + ½·½) / (1 + ½) = 5/6; the reversed query gets −5/6.
    query = PairSet(np.stack([E1, E2]), np.stack([E2, E1]), [0, 0])
    assert rag.margins(query) == pytest.approx([5 / 6, -5 / 6], abs=1e-6)
    # k = 1 keeps only the nearest pair.
    rag1 = RAGVote(RAGVoteOptions(k=1)).fit(memory, 1)
    assert rag1.margins(query) == pytest.approx([1.0, -1.0], abs=1e-6)


def test_vote_new_user_memory_is_its_k_pairs() -> None:
    memory = PairSet(np.stack([E1]), np.stack([E2]), [0])
    rag = RAGVote(RAGVoteOptions(k=3)).fit(memory, 1)
    uid = rag.add_user(PairSet(np.stack([E2]), np.stack([E1]), [0]))
    query = PairSet(np.stack([E1]), np.stack([E2]), [uid])
    assert rag.margins(query)[0] == pytest.approx(-1.0)


def test_dong_prompt_format() -> None:
    prompt = build_prompt([("p1", "good1", "bad1", True), ("p2", "good2", "bad2", False)], "q", "qa", "qb")
    assert prompt.startswith("p1\n\nResponse A: good1\nResponse B: bad1\n\nWhich response do you prefer?\n\n"
                             "Response A\n===\n")
    assert "p2\n\nResponse A: bad2\nResponse B: good2\n\nWhich response do you prefer?\n\nResponse B\n===\n" in prompt
    assert prompt.endswith("q\n\nResponse A: qa\nResponse B: qb\nWhich response do you prefer?\n")


def test_texts_are_split_back_into_prompt_and_responses() -> None:
    texts = ["tell me\n\nyes", "tell me\n\nno", "tell me"]
    pairs = PairSet(np.stack([E1]), np.stack([E2]), [0], [0], [1], prompt=np.stack([E3]), texts=texts, prompt_idx=[2])
    assert split_texts(texts, pairs, 0) == ("tell me", "yes", "no")


def test_retrieval_is_by_prompt_similarity_top_k(monkeypatch) -> None:
    # Three memory pairs whose prompts point along e1, e2, e3; a query prompt near e3 then e1 retrieves them
    # in that order (k = 2), whatever the responses.
    monkeypatch.setattr("personalign.prefbench.methods.rag_llm.LLMJudge.__init__", lambda self, model: None)
    prompts = np.stack([E1, E2, E3])
    memory = PairSet(np.stack([E1, E1, E1]), np.stack([E2, E2, E2]), [0, 0, 0], [0, 1, 2], [3, 4, 5],
                     prompt=prompts, texts=["t"] * 9, prompt_idx=[6, 7, 8])
    rag = RAG(RAGOptions(k=2, llm_model="unused")).fit(memory, 1)
    assert rag.retrieve(0, np.array([0.5, 0.0, 1.0], dtype=np.float32)).tolist() == [2, 0]
