"""`rag`: retrieve the user's k most similar labeled pairs and let them vote (no training).

Retrieval (`retrieval`): `pair` ranks the user's labeled pairs by cosine similarity of the comparisons'
content (normalized e_a + e_b: same topic, same kind of answers) — the benchmark's "similar past
examples"; `difference` ranks by |cos| of the preference directions (e_chosen − e_rejected).
Vote (`backend=vote`): margin = Σ_j s_j · cos(e_a − e_b, e_chosen_j − e_rejected_j) / Σ_j s_j over the top
k with similarity s_j > 0, i.e. each neighbour says "the side that resembles what I preferred wins",
weighted by how similar it is. `backend=llm` instead puts the k neighbours as in-context examples before
the query and compares a causal LM's log-probabilities of answering "A" and "B" (both orders, to cancel
position bias); it needs the texts and a model (`llm_model`, a local folder or hub id).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import Field

from personalign.config import Config
from personalign.errors import PersonalignError
from personalign.prefbench.methods.base import PairSet, PrefMethod


class RAGOptions(Config):
    k: int = Field(10, ge=1, description="neighbours retrieved per query")
    retrieval: Literal["pair", "difference"] = "pair"
    backend: Literal["vote", "llm"] = "vote"
    llm_model: str | None = Field(None, description="causal LM for backend=llm (folder or hub id)")
    llm_max_chars: int = Field(600, ge=50, description="characters kept of each text in the LLM prompt")


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


class RAG(PrefMethod):
    name = "rag"
    Options = RAGOptions

    def _fit(self, pairs: PairSet) -> None:
        if self.options.backend == "llm":
            if pairs.texts is None or pairs.a_idx is None:
                raise PersonalignError("rag(backend=llm) needs pair texts; build pairs with prefbench.features")
            if not self.options.llm_model:
                raise PersonalignError("rag(backend=llm) needs options.rag.llm_model (a causal LM folder or hub id)")
            from personalign.prefbench.methods.rag_llm import LLMJudge

            self.judge = LLMJudge(self.options.llm_model)
        self.memory: dict[int, PairSet] = {u: pairs.for_user(u) for u in range(self.n_users)}

    def _add_user(self, uid: int, pairs: PairSet) -> None:
        self.memory[uid] = pairs

    def neighbours(self, uid: int, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-k indices into the user's memory, their similarity s (≥ 0) and their vote cos(d, d_j)."""
        mem = self.memory[uid]
        d_query, d_mem = _unit(a - b), _unit(mem.a - mem.b)
        votes = d_query @ d_mem.T
        pair_sims = self.options.retrieval == "pair"
        sims = _unit(a + b) @ _unit(mem.a + mem.b).T if pair_sims else np.abs(votes)
        k = min(self.options.k, len(mem))
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        rows = np.arange(len(a))[:, None]
        return top, np.clip(sims[rows, top], 0.0, None), votes[rows, top]

    def _margins(self, pairs: PairSet) -> np.ndarray:
        out = np.zeros(len(pairs), dtype=np.float32)
        for u in np.unique(pairs.users):
            rows = np.flatnonzero(pairs.users == u)
            for start in range(0, len(rows), 1024):  # bounded memory: (chunk × memory) similarity matrices
                chunk = rows[start : start + 1024]
                top, sims, votes = self.neighbours(int(u), pairs.a[chunk], pairs.b[chunk])
                if self.options.backend == "llm":
                    out[chunk] = self._llm_margins(int(u), pairs.subset(chunk), top)
                    continue
                weight = sims.sum(axis=1)
                out[chunk] = np.where(weight > 0, (sims * votes).sum(axis=1) / np.where(weight > 0, weight, 1), 0.0)
        return out

    def _llm_margins(self, uid: int, query: PairSet, top: np.ndarray) -> np.ndarray:
        mem = self.memory[uid]
        texts: Sequence[str] = query.texts or ()
        if mem.texts is None or mem.a_idx is None or mem.b_idx is None or query.a_idx is None or query.b_idx is None:
            raise PersonalignError("rag(backend=llm) needs pair texts for the user's memory and the queries")
        cut = self.options.llm_max_chars
        margins = np.zeros(len(query), dtype=np.float32)
        for i in range(len(query)):
            shots = [(mem.texts[mem.a_idx[j]][:cut], mem.texts[mem.b_idx[j]][:cut]) for j in top[i]]
            a, b = texts[query.a_idx[i]][:cut], texts[query.b_idx[i]][:cut]
            margins[i] = self.judge.margin(shots, a, b)
        return margins
