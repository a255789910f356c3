"""`rag` (Dong et al. 2025's RAG baseline): retrieve the user's k = 3 labeled pairs whose prompts are most
similar to the query's, and ask an LLM, with them in context, whether it prefers response A or B.

Retrieval is by cosine similarity of prompt embeddings (the bench's backbone) over the user's own labeled
pairs (its training split, or a new user's k pairs). The LLM is the default model unless `llm_model` names
another causal LM; with a 135M model this is honestly near chance, as in Dong et al. with small models.
See `rag_llm` for the prompt. Scoring costs two LLM forward passes per pair, so the bench scores a capped
sample of each user's test pairs (`slow`) and skips the tax and adaptation for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import Field

from personalign.config import Config
from personalign.errors import PersonalignError
from personalign.prefbench.methods.base import PairSet, PrefMethod


class RAGOptions(Config):
    k: int = Field(3, ge=1, description="retrieved pairs per query (Dong et al.: 3)")
    llm_model: str | None = Field(None, description="causal LM folder or hub id (None: the default model)")
    # Short cuts keep a query near 600 tokens: two passes per pair of a 135M model on a loaded CPU core.
    max_prompt_chars: int = Field(150, ge=0, description="characters kept of each prompt (its end)")
    max_response_chars: int = Field(200, ge=20, description="characters kept of each response")


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def split_texts(texts: Sequence[str], pairs: PairSet, row: int) -> tuple[str, str, str]:
    """(prompt, response a, response b) of one row, recovered from the shared text table (a response's text
    is `prompt + "\\n\\n" + response`, see features.pair_text)."""
    assert pairs.a_idx is not None and pairs.b_idx is not None and pairs.prompt_idx is not None
    prompt = texts[pairs.prompt_idx[row]]

    def response(i: int) -> str:
        text = texts[i]
        at = text.find(prompt) if prompt else -1
        return text[at + len(prompt) + 2 :] if at >= 0 else text

    return prompt, response(pairs.a_idx[row]), response(pairs.b_idx[row])


class RAG(PrefMethod):
    name = "rag"
    Options = RAGOptions
    slow = True

    def _fit(self, pairs: PairSet) -> None:
        if pairs.texts is None or pairs.a_idx is None or pairs.prompt is None or pairs.prompt_idx is None:
            raise PersonalignError("rag needs pair texts and prompt embeddings; build pairs with prefbench.features")
        from personalign.prefbench.methods.rag_llm import LLMJudge

        model = self.options.llm_model
        if model is None:
            from personalign.backends.default_model import ensure_default_model

            model = str(ensure_default_model(progress=False))
        self.judge = LLMJudge(model)
        self.memory: dict[int, PairSet] = {u: pairs.for_user(u) for u in range(self.n_users)}

    def _add_user(self, uid: int, pairs: PairSet) -> None:
        self.memory[uid] = pairs

    def retrieve(self, uid: int, prompt: np.ndarray) -> np.ndarray:
        """Indices of the k memory pairs of `uid` whose prompts are most similar to `prompt` (best first)."""
        mem = self.memory[uid]
        assert mem.prompt is not None
        sims = _unit(mem.prompt) @ _unit(prompt)
        return np.argsort(-sims, kind="stable")[: self.options.k]

    def _cut(self, prompt: str, a: str, b: str) -> tuple[str, str, str]:
        n, r = self.options.max_prompt_chars, self.options.max_response_chars
        return (prompt[-n:] if n else ""), a[:r], b[:r]

    def _margins(self, pairs: PairSet) -> np.ndarray:
        if pairs.texts is None or pairs.prompt is None or pairs.prompt_idx is None:
            raise PersonalignError("rag needs the query pairs' texts and prompt embeddings")
        out = np.zeros(len(pairs), dtype=np.float32)
        for i in range(len(pairs)):
            uid = int(pairs.users[i])
            mem = self.memory[uid]
            assert mem.texts is not None
            shots = []
            for j in self.retrieve(uid, pairs.prompt[i])[::-1]:  # nearest last, next to the query
                p, good, bad = self._cut(*split_texts(mem.texts, mem, int(j)))
                # The preferred answer's side: seeded by the shot and the query's texts (not their order), so
                # both orders of the query read the same shots.
                key = (self.seed, int(j), *sorted((int(pairs.a_idx[i]), int(pairs.b_idx[i]))))
                shots.append((p, good, bad, bool(np.random.default_rng(key).random() < 0.5)))
            prompt, a, b = self._cut(*split_texts(pairs.texts, pairs, i))
            out[i] = self.judge.margin(shots, prompt, a, b)
        return out
