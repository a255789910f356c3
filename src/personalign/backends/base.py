"""The backend interface every method talks to: batched chat sampling and completion log-probabilities.

Methods depend only on `GenerationBackend`; training methods also need `TrainableBackend` (the torch
model, its tokenizer, and one canonical way to turn a chat + completion into token ids). An
OpenAI-compatible HTTP backend or a llama.cpp backend implements `GenerationBackend` alone.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from personalign.config import SamplingConfig

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": str}
Conversation = list[Message]


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """Cut `text` at the earliest stop string (the stop string itself is dropped)."""
    cut = len(text)
    for marker in stop:
        if marker:
            index = text.find(marker)
            if index != -1:
                cut = min(cut, index)
    return text[:cut]


class GenerationBackend(ABC):
    """Anything that can sample chat completions and score given completions."""

    name: str = "backend"

    @abstractmethod
    def generate(
        self, conversations: Sequence[Conversation], sampling: SamplingConfig, progress: bool = False
    ) -> list[list[str]]:
        """Return `sampling.n` completions for each conversation, in input order."""

    @abstractmethod
    def logprobs(self, conversations: Sequence[Conversation], completions: Sequence[str]) -> list[float]:
        """Sum of token log-probabilities of each completion as the assistant's reply to its conversation."""

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name}


class TrainableBackend(GenerationBackend):
    """A backend whose weights training methods can update (exposes model, tokenizer, device)."""

    model: Any
    tokenizer: Any

    @property
    @abstractmethod
    def device(self) -> Any: ...

    @abstractmethod
    def prompt_ids(self, conversation: Conversation) -> list[int]:
        """Token ids of the conversation rendered with the chat template, ending at the assistant's turn."""

    @abstractmethod
    def prompt_completion_ids(self, conversation: Conversation, completion: str) -> tuple[list[int], list[int]]:
        """(prompt ids, completion ids incl. the end-of-turn token): the split training losses mask on."""
