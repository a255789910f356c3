"""The profile schema (pydantic): validated, serializable, strict about unknown keys."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from personalign.splits import normalize


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Demonstration(_Strict):
    """One example of the person's work: what they were asked and what they wrote."""

    prompt: str = Field(min_length=1)
    output: str = Field(min_length=1)


class EvalPrompt(_Strict):
    """A held-out prompt; `reference` is the person's own answer when one exists (author benchmarks)."""

    prompt: str = Field(min_length=1)
    reference: str | None = None


class Constraints(_Strict):
    """Machine-checkable style constraints; each maps to one check in `judges.rules`."""

    sign_off: str | None = Field(None, description="text the output must end with, e.g. 'Warmly,\\nMaya'")
    banned_substrings: list[str] = Field(default_factory=list, description="e.g. an em dash '—'")
    min_words: int | None = Field(None, ge=0)
    max_words: int | None = Field(None, ge=1)
    no_bullets: bool = False
    no_placeholders: bool = Field(False, description="no template slots such as '[Your Name]'")
    single_paragraph_max_sentences: int | None = Field(
        None, ge=1, description="texts of at most this many sentences must be one paragraph"
    )

    @model_validator(mode="after")
    def _min_below_max(self) -> Constraints:
        if self.min_words is not None and self.max_words is not None and self.min_words > self.max_words:
            raise ValueError(f"min_words ({self.min_words}) is above max_words ({self.max_words})")
        return self


class RubricCriterion(_Strict):
    name: str
    description: str
    weight: float = Field(1.0, gt=0)


class Rubric(_Strict):
    """What a judge should reward and punish, in words (for LLM judges) with weights."""

    criteria: list[RubricCriterion] = Field(default_factory=list)
    penalties: list[str] = Field(default_factory=list)
    hard_failures: list[str] = Field(default_factory=list)


class Profile(_Strict):
    """Everything personalign knows about one person's way of doing one task."""

    name: str = Field(min_length=1)
    task: str = Field(min_length=1, description="e.g. 'write emails'")
    demonstrations: list[Demonstration] = Field(min_length=1)
    rules: list[str] = Field(default_factory=list)
    constraints: Constraints = Field(default_factory=Constraints)
    rubric: Rubric = Field(default_factory=Rubric)
    train_prompts: list[str] = Field(
        default_factory=list,
        description="extra prompts without answers that methods may train on (RLAIF, preference pairs); "
        "never an eval prompt",
    )
    eval_prompts: list[EvalPrompt] = Field(
        default_factory=list, description="held out by construction: never trained on, retrieved or judged from"
    )
    accept_failing_demonstrations: bool = Field(
        False, description="keep demonstrations that break the profile's own constraints (loading refuses them "
        "otherwise: a method would learn the opposite of what the constraints score)")

    @field_validator("train_prompts")
    @classmethod
    def _non_empty_train_prompts(cls, value: list[str]) -> list[str]:
        for i, prompt in enumerate(value):
            if not prompt.strip():
                raise ValueError(f"train_prompts[{i}] is empty; remove it or write the prompt")
        return value

    @model_validator(mode="after")
    def _eval_prompts_held_out(self) -> Profile:
        # Held out by construction: an eval prompt that is also a training prompt would be scored on
        # what a method trained on (see personalign.splits).
        training = {normalize(d.prompt) for d in self.demonstrations} | {normalize(p) for p in self.train_prompts}
        texts = {normalize(d.output) for d in self.demonstrations}
        for i, item in enumerate(self.eval_prompts):
            if normalize(item.prompt) in training:
                raise ValueError(
                    f"eval_prompts[{i}] ({item.prompt[:60]!r}) is also a demonstration or train prompt; eval prompts "
                    "must be held out, so remove it from one of the two lists"
                )
            if item.reference is not None and normalize(item.reference) in texts:
                raise ValueError(
                    f"eval_prompts[{i}].reference is also a demonstration's output; held-out references must not "
                    "be trained on, so remove one of them"
                )
        return self

    @field_validator("eval_prompts", mode="before")
    @classmethod
    def _strings_are_prompts(cls, value: object) -> object:
        # Allow the short form `- Write an email to ...` next to `{prompt, reference}`.
        if isinstance(value, list):
            return [{"prompt": item} if isinstance(item, str) else item for item in value]
        return value

    @property
    def first_name(self) -> str:
        return self.name.split()[0]
