"""In-context RAG backend: a causal LM reads the user's retrieved comparisons and picks A or B.

Few-shot examples alternate which side the preferred answer is shown on, so the LM cannot learn "always A";
the query is asked in both orders and the margin is the difference of the two log-odds, which cancels a
constant position bias. Slow on CPU (two forward passes per query): meant for small evaluation caps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from personalign.errors import PersonalignError

HEADER = "Below are answers one reader compared. Learn the reader's taste, then pick the answer they prefer.\n\n"


def build_prompt(shots: Sequence[tuple[str, str]], a: str, b: str) -> str:
    """Prompt ending in 'Preferred:'; shots are (preferred, other) text pairs."""
    parts = [HEADER]
    for n, (good, bad) in enumerate(shots, start=1):
        first, second, answer = (good, bad, "A") if n % 2 else (bad, good, "B")
        parts.append(f"Example {n}\nAnswer A: {first}\nAnswer B: {second}\nPreferred: {answer}\n\n")
    parts.append(f"Question\nAnswer A: {a}\nAnswer B: {b}\nPreferred:")
    return "".join(parts)


class LLMJudge:
    """Log-odds of ' A' vs ' B' as the next token of `build_prompt`, from a local or hub causal LM."""

    def __init__(self, model: str, max_tokens: int = 2048):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.model = AutoModelForCausalLM.from_pretrained(model)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PersonalignError(f"rag(backend=llm): cannot load {model!r} ({first}); give a local folder") from None
        self.model.eval()
        self.max_tokens = max_tokens
        ids_a = self.tokenizer.encode(" A", add_special_tokens=False)
        ids_b = self.tokenizer.encode(" B", add_special_tokens=False)
        self.id_a, self.id_b = ids_a[-1], ids_b[-1]
        if self.id_a == self.id_b:
            raise PersonalignError(f"rag(backend=llm): the tokenizer of {model!r} cannot tell ' A' from ' B'")

    def log_odds(self, prompt: str) -> float:
        ids = self.tokenizer.encode(prompt, add_special_tokens=True)[-self.max_tokens :]
        with torch.no_grad():
            logits = self.model(torch.tensor([ids])).logits[0, -1]
        logp = torch.log_softmax(logits.float(), dim=-1)
        return float(logp[self.id_a] - logp[self.id_b])

    def margin(self, shots: Sequence[tuple[str, str]], a: str, b: str) -> float:
        return 0.5 * (self.log_odds(build_prompt(shots, a, b)) - self.log_odds(build_prompt(shots, b, a)))
