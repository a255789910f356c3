"""The LLM of `rag`: Dong et al.'s in-context prompt, scored as log P("A") − log P("B") of the answer.

Prompt as in Dong et al.'s `baselines/rag.py`: each retrieved pair is `{prompt}\\n\\nResponse A: …\\n
Response B: …\\n\\nWhich response do you prefer?\\n\\nResponse {A|B}\\n===\\n` (the preferred answer on a
random side), then the query, sent as one user message through the model's chat template. Dong et al.
generate and look for the letter; here the assistant turn is started with "Response" and the next-token
log-probabilities of " A" and " B" are compared (deterministic, no parsing), in both orders of the query,
so a constant position bias cancels and swapping the responses flips the margin's sign exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from personalign.errors import PersonalignError

QUESTION = "Which response do you prefer?"


def shot_text(prompt: str, preferred: str, other: str, preferred_first: bool) -> str:
    a, b, answer = (preferred, other, "A") if preferred_first else (other, preferred, "B")
    return f"{prompt}\n\nResponse A: {a}\nResponse B: {b}\n\n{QUESTION}\n\nResponse {answer}\n===\n"


def build_prompt(shots: Sequence[tuple[str, str, str, bool]], prompt: str, a: str, b: str) -> str:
    """The user message: shots are (prompt, preferred, other, preferred shown first)."""
    return "".join(shot_text(*s) for s in shots) + f"{prompt}\n\nResponse A: {a}\nResponse B: {b}\n{QUESTION}\n"


class LLMJudge:
    """Log-odds of ' A' vs ' B' after the assistant starts its answer with 'Response'."""

    def __init__(self, model: str, max_tokens: int = 2048):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from personalign.settings import quiet_third_party

        quiet_third_party()  # bench workers are spawned processes: the CLI's silencing does not reach them
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.model = AutoModelForCausalLM.from_pretrained(model)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PersonalignError(f"rag: cannot load the LLM {model!r} ({first}); give a local folder") from None
        self.model.eval()
        self.max_tokens = max_tokens
        ids_a = self.tokenizer.encode(" A", add_special_tokens=False)
        ids_b = self.tokenizer.encode(" B", add_special_tokens=False)
        self.id_a, self.id_b = ids_a[-1], ids_b[-1]
        if self.id_a == self.id_b:
            raise PersonalignError(f"rag: the tokenizer of {model!r} cannot tell ' A' from ' B'")

    def render(self, message: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                                      add_generation_prompt=True) + "Response"
        return message + "\nResponse"

    def log_odds(self, message: str) -> float:
        # Keep the end: the query and the nearest shots sit last.
        ids = self.tokenizer.encode(self.render(message), add_special_tokens=False)[-self.max_tokens :]
        with torch.no_grad():
            logits = self.model(torch.tensor([ids])).logits[0, -1]
        logp = torch.log_softmax(logits.float(), dim=-1)
        return float(logp[self.id_a] - logp[self.id_b])

    def margin(self, shots: Sequence[tuple[str, str, str, bool]], prompt: str, a: str, b: str) -> float:
        forward, backward = build_prompt(shots, prompt, a, b), build_prompt(shots, prompt, b, a)
        return 0.5 * (self.log_odds(forward) - self.log_odds(backward))
