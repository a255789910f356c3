"""One way to turn a spec into a ready personalizer: a method name (+ profile), or a trained run dir, `+prompt`.

Used by `generate`, `compare`, `serve` and the studio, so a method means the same thing everywhere.
Spec forms:
- `prompt`, `prompt-rag`, `sft+prompt`, ... a registered method; fitted on the profile (trained methods train,
  writing into `run_dir` when one is given);
- `runs/sft-20260101-120000` a finished `personalize` run dir (its `method.json` names model, adapter, profile);
- `runs/sft-20260101-120000+prompt` that run's adapter with the profile's `prompt` conversation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personalign.backends.base import GenerationBackend
from personalign.config import ModelConfig
from personalign.errors import PersonalignError
from personalign.methods.base import (
    METHOD_FILE,
    Personalizer,
    available_methods,
    load_personalizer,
    method_class,
    validate_method_config,
)
from personalign.profiles import Profile, load_profile
from personalign.runs import RunDir

PROMPT_SUFFIX = "+prompt"
BackendFactory = Callable[[ModelConfig], GenerationBackend]


@dataclass(frozen=True)
class Spec:
    """A parsed spec: either `method` or `run` is set; `prompted` for a run used with the `prompt` conversation."""

    text: str
    method: str | None = None
    run: Path | None = None
    prompted: bool = False

    @property
    def trainable(self) -> bool:
        return self.method is not None and method_class(self.method).trainable

    @property
    def label(self) -> str:
        """A short name: the method, or the run dir's name (`+prompt` kept)."""
        if self.method is not None:
            return self.method
        assert self.run is not None
        return self.run.name + (PROMPT_SUFFIX if self.prompted else "")


def parse_spec(spec: str) -> Spec:
    """Classify `spec` without loading anything; a one-line error when it is neither a method nor a run dir."""
    text = spec.strip()
    if not text:
        raise PersonalignError("empty method spec; give a method name (e.g. prompt) or a run dir")
    if text in available_methods():
        return Spec(text, method=text)
    run_text, prompted = (text[: -len(PROMPT_SUFFIX)], True) if text.endswith(PROMPT_SUFFIX) else (text, False)
    run = Path(run_text)
    if (run / METHOD_FILE).is_file():
        return Spec(text, run=run, prompted=prompted)
    if run.is_dir():
        raise PersonalignError(f"{run}: no {METHOD_FILE}; pass the folder of a finished `personalize` run")
    raise PersonalignError(
        f"unknown method or run dir {spec!r}; use one of: {', '.join(available_methods())}, "
        f"or a run dir (optionally DIR{PROMPT_SUFFIX})"
    )


def resolve_personalizer(
    spec: str | Spec,
    *,
    profile: Profile | str | Path | None = None,
    model: ModelConfig | None = None,
    method_config: dict[str, Any] | None = None,
    quick: bool = False,
    run_dir: RunDir | None = None,
    backend: GenerationBackend | None = None,
    backend_factory: BackendFactory | None = None,
    seed: int = 0,
) -> Personalizer:
    """A personalizer ready to generate, built from `spec` (see the module docstring).

    - `profile`: needed by every method but `base`; for a run dir it replaces the profile saved in the run.
    - `model`: the base model of a method; for a run dir only its device and dtype apply (the run names its model).
    - `method_config`: the method's config fields (over its quick settings when `quick`).
    - `run_dir`: where a trained method writes adapter, checkpoints and `method.json` (its resolved config and
      env are written there first).
    - `backend`: a backend to share between untrained methods; a trained method always gets a fresh one from
      `backend_factory` (training changes weights), as does a run dir (it names its own model and adapter).
    - `backend_factory`: how a `ModelConfig` becomes a backend (default `build_backend`; the server passes one
      that puts every adapter on one shared base model).
    """
    from personalign.backends.registry import build_backend

    parsed = spec if isinstance(spec, Spec) else parse_spec(spec)
    factory = backend_factory or build_backend
    model = model or ModelConfig()
    loaded_profile = load_profile(profile) if isinstance(profile, str | Path) else profile

    if parsed.run is not None:
        if method_config:
            raise PersonalignError(f"{parsed.text}: a run dir keeps its trained config; method fields cannot change it")
        personalizer = load_personalizer(parsed.run, device=model.device, dtype=model.dtype,
                                         backend_factory=factory)
        if loaded_profile is not None:
            personalizer.profile = loaded_profile
        if parsed.prompted:
            from personalign.methods.prompted import PromptedRun

            if personalizer.profile is None:
                raise PersonalignError(f"{parsed.text}: the run saved no profile; pass --profile for {PROMPT_SUFFIX}")
            personalizer = PromptedRun(personalizer)
        return personalizer

    assert parsed.method is not None
    name = parsed.method
    if loaded_profile is None and name != "base":
        raise PersonalignError(f"a profile is required for method {name!r} (--profile FILE), or pass a run dir")
    cls = method_class(name)
    config = dict(cls.quick_overrides() if quick else {})
    config.update(method_config or {})
    validated = validate_method_config(name, config)  # before any model loads
    own_backend = cls.trainable or backend is None
    personalizer = cls(factory(model) if own_backend else backend, validated)
    if cls.trainable and run_dir is not None:
        run_dir.write_config({"method": name, "method_config": personalizer.config.to_dict(), "model": model.to_dict()})
        run_dir.write_env(getattr(personalizer.config, "seed", seed),
                          device=str(getattr(personalizer.backend, "device", model.device)))
    if loaded_profile is not None:
        personalizer.fit(loaded_profile, run_dir if cls.trainable else None)
    return personalizer
