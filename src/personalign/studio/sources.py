"""Where the studio's candidates come from: method specs resolved by `methods.spec` (untrained methods on one
shared backend, trained run dirs on their own), so a method means here what it means in `generate` and `compare`.

Generation always goes through a `GenerationBackend` built from `ModelConfig`, so the studio fronts whatever
backend the registry builds (the local hf engine or a remote OpenAI-compatible server).
"""

from __future__ import annotations

from dataclasses import dataclass

from personalign.config import ModelConfig, SamplingConfig
from personalign.errors import PersonalignError
from personalign.feedback.db import Candidate
from personalign.methods.base import Personalizer
from personalign.methods.spec import PROMPT_SUFFIX, Spec, parse_spec, resolve_personalizer
from personalign.profiles.schema import Profile


@dataclass
class Source:
    """One candidate generator: a method name, and the run dir it was trained in (None for untrained methods)."""

    method: str
    run: str | None
    personalizer: Personalizer

    def generate(self, prompt: str, sampling: SamplingConfig, seed: int) -> Candidate:
        settings = sampling.model_copy(update={"n": 1, "seed": seed})
        text = self.personalizer.generate([prompt], settings)[0][0]
        return Candidate(text, self.method, self.run, seed)

    def refit(self, profile: Profile) -> None:
        """A profile edit reaches untrained methods (and `RUN+prompt` conversations) at once; trained weights stay."""
        if self.run is None:
            self.personalizer.fit(profile)
        else:
            self.personalizer.profile = profile


def parse_sources(methods: list[str], runs: list[str]) -> list[Spec]:
    """Fail on an unknown method, an untrained trainable method or a bad run dir before any model loads."""
    specs = [parse_spec(s) for s in [*methods, *runs]]
    for spec in specs:
        if spec.trainable:
            raise PersonalignError(f"--methods {spec.text!r} needs training first: `personalign personalize --method "
                                   f"{spec.text}`, then pass its run dir with --runs")
    if not specs:
        raise PersonalignError("no candidates: pass --methods (e.g. base,prompt) and/or --runs RUN_DIR,...")
    return specs


def build_sources(profile: Profile, methods: list[str], runs: list[str], model: ModelConfig) -> list[Source]:
    from personalign.backends.registry import build_backend

    specs = parse_sources(methods, runs)
    shared = build_backend(model) if any(s.method for s in specs) else None
    sources: list[Source] = []
    for spec in specs:
        personalizer = resolve_personalizer(spec, profile=profile, model=model, backend=shared)
        if spec.run is None:
            assert spec.method is not None
            sources.append(Source(spec.method, None, personalizer))
        else:
            method = personalizer.name + (PROMPT_SUFFIX if spec.prompted else "")
            sources.append(Source(method, str(spec.run), personalizer))
    return sources
