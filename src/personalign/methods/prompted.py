"""`sft+prompt` and `ditto+prompt`: a trained adapter used with the profile's prompt, exactly as `prompt` builds it.

The adapter is trained exactly as plain `sft` / `ditto` train it (on the bare user prompt), so a `sft+prompt`
run and a `sft` run differ only in what generation sends: here the system prompt, rules and few-shot turns of
`PromptMethod`. `PromptedRun` does the same for an already trained run dir (`RUN+prompt` specs).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from personalign.backends.base import Conversation
from personalign.methods.base import MethodConfig, Personalizer
from personalign.methods.ditto import DittoConfig, DittoMethod
from personalign.methods.prompting import PromptConfig, PromptMethod
from personalign.methods.sft import SFTConfig, SFTMethod
from personalign.methods.spec import PROMPT_SUFFIX
from personalign.profiles.schema import Profile
from personalign.runs import RunDir
from personalign.splits import TrainingData


def prompted_conversation(
    profile: Profile | None, config: PromptConfig, prompt: str, who: str = "prompt"
) -> Conversation:
    """The chat `prompt` would send for `prompt` with `profile` (one builder, no copy; no model needed)."""
    if profile is None:
        raise RuntimeError(f"{who}: call fit(profile) before generate")
    builder = PromptMethod(None, config)  # type: ignore[arg-type]  # building a chat never touches the backend
    builder.profile = profile
    return builder.conversation(prompt)


class _PromptedGeneration(Personalizer):
    """Mixin: training sees the parent method's bare conversation, generation the `prompt` conversation."""

    _training: bool = False

    def fit(self, profile: Profile, run_dir: RunDir | None = None) -> None:
        self._training = True
        try:
            super().fit(profile, run_dir)
        finally:
            self._training = False

    def conversation(self, prompt: str) -> Conversation:
        if self._training:
            return super().conversation(prompt)
        return prompted_conversation(self.profile, self.config.prompt, prompt, self.name)  # type: ignore[attr-defined]


class SFTPromptConfig(SFTConfig):
    prompt: PromptConfig = Field(default_factory=PromptConfig, description="how the prompt is built at generation")


class DittoPromptConfig(DittoConfig):
    prompt: PromptConfig = Field(default_factory=PromptConfig, description="how the prompt is built at generation")


class SFTPromptMethod(_PromptedGeneration, SFTMethod):
    name = "sft+prompt"
    config_class: ClassVar[type[MethodConfig]] = SFTPromptConfig


class DittoPromptMethod(_PromptedGeneration, DittoMethod):
    name = "ditto+prompt"
    config_class: ClassVar[type[MethodConfig]] = DittoPromptConfig


class PromptedRun(Personalizer):
    """A loaded trained personalizer whose generation goes through the `prompt` conversation (`RUN+prompt`)."""

    name = "run+prompt"

    def __init__(self, inner: Personalizer, config: PromptConfig | None = None):
        super().__init__(inner.backend, config or PromptConfig())
        self.inner = inner
        self.profile = inner.profile
        # What a scorer must check: the run's training data plus the demonstrations its prompt shows.
        if inner.training_data is not None and inner.profile is not None:
            demos = inner.profile.demonstrations
            self.training_data = inner.training_data.union(
                TrainingData.of([d.prompt for d in demos], [d.output for d in demos]))

    def conversation(self, prompt: str) -> Conversation:
        return prompted_conversation(self.profile, self.config, prompt, self.name)  # type: ignore[arg-type]


def reuse_trained(name: str, fitted: dict[str, Personalizer], method_configs: dict[str, dict[str, Any]]
                  ) -> Personalizer | None:
    """`sft+prompt` / `ditto+prompt` from the already trained `sft` / `ditto` of the same comparison.

    They train exactly the same adapter (same data, config and seed), so training it twice only doubles the
    cost; reused only when the two were given the same training fields (the `+prompt` one's `prompt` field
    aside, which only changes generation)."""
    base = name.removesuffix(PROMPT_SUFFIX)
    if base == name or base not in fitted:
        return None
    own = {k: v for k, v in method_configs.get(name, {}).items() if k != "prompt"}
    if own != method_configs.get(base, {}):
        return None
    prompt_config = PromptConfig.model_validate(method_configs.get(name, {}).get("prompt", {}))
    reused = PromptedRun(fitted[base], prompt_config)
    reused.name = name
    return reused
