"""Client-side chat rendering: the one place chats become token ids and sampled tokens become text.

Every engine receives token ids, so what a model is trained on is exactly what it is sampled from: the
tokenizer's own chat template (`apply_chat_template`), never a hand-written format (tinker-cookbook PR #742:
a renderer that disagreed with the template turned a step-0 reward of 0.738 into 0.238).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from personalign.backends.base import Conversation, truncate_at_stop
from personalign.engines.base import SampledSequence


class ChatRenderer:
    """Render chats with a Hugging Face tokenizer's chat template; decode samples back to text."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def prompt_ids(self, conversation: Conversation) -> list[int]:
        """The conversation rendered up to and including the assistant's turn header."""
        return list(self.tokenizer.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])

    def prompt_completion_ids(self, conversation: Conversation, completion: str,
                              ended: bool = True) -> tuple[list[int], list[int]]:
        """(prompt ids, completion ids). `ended`: the completion stopped on its own, so it carries the
        end-of-turn token(s) the template puts after a reply; a sample cut at the token limit does not
        (training on an end-of-turn it never produced would teach "stop here").
        """
        prompt = self.prompt_ids(conversation)
        content = list(self.tokenizer(completion, add_special_tokens=False)["input_ids"])
        if not ended:
            return prompt, content
        reply = [*conversation, {"role": "assistant", "content": completion}]
        full = list(self.tokenizer.apply_chat_template(reply, tokenize=True, return_dict=True)["input_ids"])
        if full[: len(prompt)] == prompt and len(full) > len(prompt):
            return prompt, full[len(prompt):]
        # Templates that re-render earlier turns differently: fall back to prompt + raw completion + eos.
        return prompt, [*content, self.tokenizer.eos_token_id]

    def decode(self, sample: SampledSequence, stop: Sequence[str] = ()) -> tuple[str, bool]:
        """(text, ended on its own): special tokens dropped, cut at the first stop string, stripped."""
        text = self.tokenizer.decode(sample.tokens, skip_special_tokens=True)
        cut = truncate_at_stop(text, stop)
        return cut.strip(), sample.stop_reason == "stop" or len(cut) < len(text)
