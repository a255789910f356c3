"""`rag-vote`: retrieve the user's k most similar labeled pairs and let them vote (no training, no LLM).

Retrieval (`retrieval`): `pair` ranks the user's labeled pairs by cosine similarity of the comparisons'
content (normalized e_a + e_b: same topic, same kind of answers); `difference` ranks by |cos| of the
preference directions (e_chosen − e_rejected). Vote: margin = Σ_j s_j · cos(e_a − e_b, e_chosen_j −
e_rejected_j) / Σ_j s_j over the top k with similarity s_j > 0, i.e. each neighbour says "the side that
resembles what I preferred wins", weighted by how similar it is. An embedding-space stand-in for Dong et
al.'s RAG (which is `rag`: an LLM reads the neighbours in context).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from personalign.config import Config
from personalign.prefbench.methods.base import PairSet, PrefMethod


class RAGVoteOptions(Config):
    k: int = Field(10, ge=1, description="neighbours retrieved per query")
    retrieval: Literal["pair", "difference"] = "pair"


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


class RAGVote(PrefMethod):
    name = "rag-vote"
    Options = RAGVoteOptions

    def _fit(self, pairs: PairSet) -> None:
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
                _, sims, votes = self.neighbours(int(u), pairs.a[chunk], pairs.b[chunk])
                weight = sims.sum(axis=1)
                out[chunk] = np.where(weight > 0, (sims * votes).sum(axis=1) / np.where(weight > 0, weight, 1), 0.0)
        return out
