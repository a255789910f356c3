"""`prompt` and `prompt-rag`: personalize by prompting alone (rules + few-shot demonstrations).

`prompt` puts the task, the rules (written and machine-checkable) and k demonstrations into the chat;
`prompt-rag` picks, for each input, the k demonstrations whose prompts are nearest by embedding.
The retrieval pool is the demonstrations only: eval prompts are held out by construction, and the
pool is recorded (`record_training`) so a scorer can check it never holds an eval item.
Demonstrations go in as earlier user/assistant turns: small chat models imitate prior turns far
more reliably than examples pasted into a system prompt.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from personalign.backends.base import Conversation
from personalign.methods.base import MethodConfig, Personalizer
from personalign.profiles.schema import Constraints, Demonstration, Profile
from personalign.runs import RunDir


class PromptConfig(MethodConfig):
    k: int | None = Field(None, ge=0, description="demonstrations to include; None = all")
    include_rules: bool = True
    fewshot_format: Literal["turns", "system"] = Field(
        "turns", description="demonstrations as prior chat turns, or inside the system prompt"
    )


class RetrievalPromptConfig(PromptConfig):
    k: int | None = Field(2, ge=1, description="nearest demonstrations per input")
    embedder: str = "minilm"


def describe_constraints(constraints: Constraints) -> list[str]:
    """Turn machine-checkable constraints into plain-language rules for the prompt."""
    lines: list[str] = []
    if constraints.min_words is not None and constraints.max_words is not None:
        lines.append(f"Write between {constraints.min_words} and {constraints.max_words} words.")
    elif constraints.max_words is not None:
        lines.append(f"Write at most {constraints.max_words} words.")
    elif constraints.min_words is not None:
        lines.append(f"Write at least {constraints.min_words} words.")
    if constraints.no_bullets:
        lines.append("Use complete sentences in paragraphs; no bullet points or numbered lists.")
    for banned in constraints.banned_substrings:
        lines.append(f"Never use {banned!r}.")
    if constraints.no_placeholders:
        lines.append("Never leave template placeholders such as [Your Name]; write the real text.")
    if constraints.single_paragraph_max_sentences:
        lines.append(
            f"If the text has {constraints.single_paragraph_max_sentences} sentences or fewer, write one paragraph."
        )
    if constraints.sign_off:
        shown = constraints.sign_off.replace("\n", " + line break + ")
        lines.append(f"End with exactly this sign-off: {shown}")
    return lines


def system_prompt(profile: Profile, include_rules: bool, demos_inline: list[Demonstration] | None = None) -> str:
    parts = [f"You write as {profile.name}. Your task: {profile.task}. Match {profile.first_name}'s style exactly."]
    if include_rules:
        rules = [*profile.rules, *describe_constraints(profile.constraints)]
        if rules:
            parts.append("Style rules:\n" + "\n".join(f"- {rule}" for rule in rules))
    if demos_inline:
        examples = "\n\n".join(f"Request: {d.prompt}\nResponse:\n{d.output}" for d in demos_inline)
        parts.append(f"Examples of {profile.first_name}'s writing:\n\n{examples}")
    parts.append("Reply with the text only, no preamble or notes.")
    return "\n\n".join(parts)


class PromptMethod(Personalizer):
    name = "prompt"
    config_class: ClassVar[type[MethodConfig]] = PromptConfig
    config: PromptConfig

    def fit(self, profile: Profile, run_dir: RunDir | None = None) -> None:
        super().fit(profile, run_dir)
        demos = self.pool()
        self.record_training([d.prompt for d in demos], [d.output for d in demos])

    def pool(self) -> list[Demonstration]:
        """The demonstrations this method may put in context (`prompt`: the first k; `prompt-rag`: all)."""
        assert self.profile is not None, "call fit(profile) first"
        demos = self.profile.demonstrations
        return demos if self.config.k is None else demos[: self.config.k]

    def demonstrations_for(self, prompt: str) -> list[Demonstration]:
        return self.pool()

    def conversation(self, prompt: str) -> Conversation:
        if self.profile is None:
            raise RuntimeError(f"{self.name}: call fit(profile) before generate")
        demos = self.demonstrations_for(prompt)
        inline = self.config.fewshot_format == "system"
        system = system_prompt(self.profile, self.config.include_rules, demos if inline else None)
        messages: Conversation = [{"role": "system", "content": system}]
        if not inline:
            for demo in demos:
                messages += [{"role": "user", "content": demo.prompt}, {"role": "assistant", "content": demo.output}]
        messages.append({"role": "user", "content": prompt})
        return messages


class RetrievalPromptMethod(PromptMethod):
    name = "prompt-rag"
    config_class: ClassVar[type[MethodConfig]] = RetrievalPromptConfig
    config: RetrievalPromptConfig

    def fit(self, profile: Profile, run_dir: RunDir | None = None) -> None:
        from personalign.backends.embedder import get_embedder

        super().fit(profile, run_dir)
        self._embedder = get_embedder(self.config.embedder)
        self._demo_vectors = self._embedder.encode([d.prompt for d in self.pool()])

    def pool(self) -> list[Demonstration]:
        assert self.profile is not None, "call fit(profile) first"
        return list(self.profile.demonstrations)

    def demonstrations_for(self, prompt: str) -> list[Demonstration]:
        assert self.profile is not None
        query = self._embedder.encode([prompt])[0]
        return nearest_demonstrations(query, self._demo_vectors, self.pool(), self.config.k or 1)


def nearest_demonstrations(
    query: np.ndarray, demo_vectors: np.ndarray, demos: list[Demonstration], k: int
) -> list[Demonstration]:
    """The k demonstrations most cosine-similar to `query` (vectors are unit-norm), most similar last.

    Most similar last: it then sits right before the new request, where small models attend most.
    """
    similarity = demo_vectors @ query
    top = np.argsort(-similarity, kind="stable")[:k]
    return [demos[i] for i in reversed(top)]
