"""The `Personalizer` interface every method implements, and the registry that finds a method by name.

Contract: `fit(profile, run_dir)` may read the profile and write artifacts into the run dir (adapters,
synthetic data, checkpoints); `generate(prompts, sampling)` returns n samples per prompt. A trained
method saves `method.json` in its run dir so `load_personalizer(run_dir)` can rebuild it later. Every
method that learns from or retrieves data calls `record_training` before it trains; the record is checked
against the eval prompts at once and saved beside `method.json` (`personalign.splits`), so a run can
never be scored on what it trained on.
"""

from __future__ import annotations

import importlib
import importlib.util
from abc import ABC
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from personalign.backends.base import Conversation, GenerationBackend
from personalign.config import Config, ModelConfig, SamplingConfig
from personalign.errors import PersonalignError
from personalign.io import atomic_write_json
from personalign.profiles.schema import Profile
from personalign.runs import RunDir
from personalign.splits import (
    LeakageError,
    TrainingData,
    assert_disjoint,
    read_training_data,
    write_training_data,
)

METHOD_FILE = "method.json"


class MethodConfig(Config):
    """Base of each method's own config (fields differ per method)."""


class Personalizer(ABC):
    """Fit from a profile, then generate for prompts. Subclasses override what they need."""

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    trainable: ClassVar[bool] = False

    def __init__(self, backend: GenerationBackend, config: MethodConfig | None = None):
        self.backend = backend
        self.config = config if config is not None else self.config_class()
        self.profile: Profile | None = None
        self.training_data: TrainingData | None = None

    @classmethod
    def quick_overrides(cls) -> dict[str, Any]:
        """Config fields that make this method finish in minutes on 2 CPU cores (`--quick`, the demo)."""
        return {}

    def fit(self, profile: Profile, run_dir: RunDir | None = None) -> None:
        """Prepare for `profile`; the untrained methods only remember it."""
        self.profile = profile

    def record_training(self, prompts: Sequence[str] = (), texts: Sequence[str] = (),
                        also: TrainingData | None = None) -> TrainingData:
        """Record the prompts and texts this method trains on or retrieves from (`also`: e.g. a reward
        model's own training data); refuses at once, before any training, when one is a held-out eval item."""
        self.training_data = TrainingData.of(prompts, texts).union(also).union(self.training_data)
        if self.profile is not None:
            assert_disjoint(self.training_data, [p.prompt for p in self.profile.eval_prompts],
                            [p.reference for p in self.profile.eval_prompts if p.reference], who=f"method {self.name}")
        return self.training_data

    def assert_not_trained_on(self, prompts: Sequence[str], texts: Sequence[str] = (), who: str | None = None) -> None:
        """Refuse (one line) to score this method on eval items it trained on or retrieves from; a trained
        method that recorded nothing is refused too (nothing shows it is clean)."""
        who = who or f"method {self.name}"
        if self.trainable and self.training_data is None:
            raise LeakageError(f"{who}: trained without recording its training data (record_training), so "
                               "nothing shows it never saw the eval prompts; record it in fit()")
        assert_disjoint(self.training_data, prompts, texts, who=who)

    def conversation(self, prompt: str) -> Conversation:
        """The chat sent to the backend for one user prompt (methods add system prompts, few-shot turns)."""
        return [{"role": "user", "content": prompt}]

    def generate(self, prompts: Sequence[str], sampling: SamplingConfig, progress: bool = False) -> list[list[str]]:
        return self.backend.generate([self.conversation(p) for p in prompts], sampling, progress=progress)

    # ---- persistence for trained methods ------------------------------------------------------
    def save_manifest(self, run_dir: RunDir, model: ModelConfig, adapter: str | None = None, **extra: Any) -> None:
        """Record what `load_personalizer` needs (the method, its config, the base model and adapter), and
        beside it the fingerprints of what it trained on (`training_data.json`)."""
        if self.training_data is not None:
            write_training_data(run_dir.path, self.training_data)
        atomic_write_json(
            run_dir.path / METHOD_FILE,
            {
                "method": self.name,
                "config": self.config.to_dict(),
                "model": model.to_dict(),
                "adapter": adapter,
                "profile": self.profile.model_dump(mode="json") if self.profile else None,
                **extra,
            },
        )


# name → "module:Class". Lazy so that importing the CLI does not import torch-heavy trainers.
METHODS: dict[str, str] = {
    "base": "personalign.methods.base_model:BaseModelMethod",
    "prompt": "personalign.methods.prompting:PromptMethod",
    "prompt-rag": "personalign.methods.prompting:RetrievalPromptMethod",
    "sft": "personalign.methods.sft:SFTMethod",
    "dpo": "personalign.methods.dpo:DPOMethod",
    "ditto": "personalign.methods.ditto:DittoMethod",
    "sft+prompt": "personalign.methods.prompted:SFTPromptMethod",
    "ditto+prompt": "personalign.methods.prompted:DittoPromptMethod",
    "rlaif": "personalign.methods.rlaif:RLAIFMethod",
}


def available_methods() -> list[str]:
    """Registered methods whose module is present in this install."""
    return [name for name, target in METHODS.items() if importlib.util.find_spec(target.split(":")[0])]


def method_class(name: str) -> type[Personalizer]:
    if name not in METHODS or name not in available_methods():
        raise PersonalignError(f"unknown method {name!r}; choose one of: {', '.join(available_methods())}")
    module_name, class_name = METHODS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def validate_method_config(name: str, config: dict[str, Any] | None = None) -> MethodConfig:
    """The method's typed config from plain fields; a one-line error (before any model loads) when invalid."""
    from pydantic import ValidationError

    from personalign.config import format_validation_error

    try:
        return method_class(name).config_class.model_validate(config or {})
    except ValidationError as exc:
        raise PersonalignError(format_validation_error(exc, f"config of method {name!r}")) from None


def build_personalizer(name: str, backend: GenerationBackend, config: dict[str, Any] | None = None) -> Personalizer:
    return method_class(name)(backend, validate_method_config(name, config))


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    import json

    path = Path(run_dir) / METHOD_FILE
    if not path.is_file():
        raise PersonalignError(f"{run_dir}: no {METHOD_FILE}; pass the folder of a finished `personalize` run")
    return json.loads(path.read_text(encoding="utf-8"))


def load_personalizer(
    run_dir: str | Path, device: str | None = None, dtype: str | None = None,
    backend_factory: Callable[[ModelConfig], GenerationBackend] | None = None,
) -> Personalizer:
    """Rebuild a trained method from its run dir: base model + saved adapter + the method's config.

    The saved model (a full fine-tune may have replaced it) is authoritative; only where it runs
    (`device`, `dtype`) can be changed. `backend_factory` (default `build_backend`) turns the run's model
    config into a backend (the server shares one base model between adapters this way).
    """
    from personalign.backends.registry import build_backend

    manifest = read_manifest(run_dir)
    placement = {k: v for k, v in {"device": device, "dtype": dtype}.items() if v is not None}
    model = ModelConfig.model_validate(manifest["model"]).model_copy(update=placement)
    if manifest.get("adapter") and str(manifest["adapter"]).startswith("tinker://"):
        model = model.model_copy(update={"adapter": manifest["adapter"]})  # weights on the service, not a path
    elif manifest.get("adapter"):
        adapter = Path(manifest["adapter"])
        model = model.model_copy(update={"adapter": str(adapter if adapter.is_absolute() else Path(run_dir) / adapter)})
    method_config = validate_method_config(manifest["method"], manifest.get("config"))
    personalizer = method_class(manifest["method"])((backend_factory or build_backend)(model), method_config)
    if manifest.get("profile"):
        personalizer.profile = Profile.model_validate(manifest["profile"])
    personalizer.training_data = read_training_data(run_dir)
    return personalizer
