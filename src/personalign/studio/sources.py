"""Where the studio's candidates come from: untrained methods on one shared backend, and trained run dirs.

Generation always goes through a `GenerationBackend` (built from `ModelConfig`), so the studio fronts
whatever backend the registry builds: the local hf engine or a remote OpenAI-compatible server.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from personalign.config import ModelConfig, SamplingConfig
from personalign.errors import PersonalignError
from personalign.feedback.db import Candidate
from personalign.methods.base import Personalizer
from personalign.profiles.schema import Profile


@dataclass
class Source:
    """One candidate generator: a method name (and the run dir it was trained in, if any)."""

    method: str
    run: str | None
    personalizer: Personalizer

    def generate(self, prompt: str, sampling: SamplingConfig, seed: int) -> Candidate:
        settings = sampling.model_copy(update={"n": 1, "seed": seed})
        text = self.personalizer.generate([prompt], settings)[0][0]
        return Candidate(text, self.method, self.run, seed)

    def refit(self, profile: Profile) -> None:
        """A profile edit reaches untrained methods at once; a trained run keeps the profile it was trained on."""
        if self.run is None:
            self.personalizer.fit(profile)


def check_sources(methods: list[str], runs: list[str]) -> None:
    """Fail on an unknown method or a bad run dir before any model loads."""
    from personalign.methods.base import method_class, read_manifest

    for name in methods:
        if method_class(name).trainable:
            raise PersonalignError(f"--methods {name!r} needs training first: `personalign personalize --method "
                                   f"{name}`, then pass its run dir with --runs")
    for run in runs:
        read_manifest(run)
    if not methods and not runs:
        raise PersonalignError("no candidates: pass --methods (e.g. base,prompt) and/or --runs RUN_DIR,...")


def build_sources(profile: Profile, methods: list[str], runs: list[str], model: ModelConfig) -> list[Source]:
    from personalign.backends.registry import build_backend
    from personalign.methods.base import build_personalizer, load_personalizer

    check_sources(methods, runs)
    sources: list[Source] = []
    backend = build_backend(model) if methods else None
    for name in methods:
        assert backend is not None
        personalizer = build_personalizer(name, backend)
        personalizer.fit(profile)
        sources.append(Source(name, None, personalizer))
    for run in runs:
        trained = load_personalizer(run, device=model.device, dtype=model.dtype)
        sources.append(Source(trained.name, str(Path(run)), trained))
    return sources
