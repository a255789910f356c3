"""Typed, serializable configs: defaults, then a YAML file, then CLI flags (dotted keys for nesting)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from personalign.errors import PersonalignError
from personalign.io import atomic_write_yaml, read_yaml


class Config(BaseModel):
    """Base of every config: unknown keys are errors, and it round-trips through YAML."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def save(self, path: str | Path) -> Path:
        return atomic_write_yaml(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Self:
        return resolve_config(cls, path, {})


class OpenAISettings(Config):
    """How `backend: openai` reaches an OpenAI-compatible server (OpenAI, vLLM, `personalign serve`, ...)."""

    base_url: str = Field("http://127.0.0.1:8000/v1", description="the API root, ending in /v1")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the key (unset: none)")
    timeout_s: float = Field(120.0, gt=0, description="per request")
    # The openai client's own retry: exponential backoff on 429, 5xx and connection errors, honouring Retry-After.
    max_retries: int = Field(5, ge=0)
    concurrency: int = Field(8, ge=1, description="requests in flight at once (a batch is sent concurrently)")


class ModelConfig(Config):
    """Which generator to load and how."""

    model: str = Field("default", description="'default' (embedded SmolLM2-135M-Instruct), a hub id or a folder; "
                       "with backend openai, the server's model name")
    backend: Literal["hf", "openai"] = "hf"
    openai: OpenAISettings = Field(default_factory=OpenAISettings, description="used by backend: openai")
    dtype: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto = bf16 where the CPU/GPU supports it (≈2× faster generation here), else fp32"
    )
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, ...")
    adapter: str | None = Field(None, description="folder of a LoRA adapter to load on top")
    batch_size: int | None = Field(
        None, ge=1, description="sequences per generation batch; None = 8 on CPU, 64 on a GPU (launch-bound there)"
    )


class SamplingConfig(Config):
    """How to sample completions; shared by every generating method."""

    n: int = Field(1, ge=1)
    temperature: float = Field(0.7, ge=0.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_new_tokens: int = Field(160, ge=1, description="160 tokens fit a 150-word email")
    repetition_penalty: float = Field(
        1.0, gt=0.0, description="> 1 discourages repeating generated tokens (CTRL-style; prompt tokens are not "
        "penalized); 1.0 samples the policy as is (RL, DITTO)"
    )
    stop: list[str] = Field(default_factory=list)
    seed: int = 0


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise PersonalignError(f"config key {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        merged[key] = _deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(
            merged.get(key), dict) else value
    return merged


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem: where, what is wrong, and the valid form."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            parts.append(f"{where}: unknown key; remove it or check its spelling")
        elif err["type"] == "missing":
            parts.append(f"{where}: required field missing; add it")
        else:
            parts.append(f"{where}: {err['msg']} (got {err.get('input')!r})")
    return f"{source}: " + "; ".join(parts)


C = TypeVar("C", bound=BaseModel)


def resolve_config(
    cls: type[C], config_file: str | Path | None, overrides: dict[str, Any], defaults: dict[str, Any] | None = None
) -> C:
    """Build `cls` from its defaults (or `defaults`), a YAML file, then non-None overrides (keys may be dotted)."""
    data: dict[str, Any] = dict(defaults or {})
    source = "command-line flags"
    if config_file:
        loaded = read_yaml(config_file)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise PersonalignError(f"{config_file}: expected a mapping of config fields at the top level")
        data = _deep_merge(data, loaded)
        source = f"{config_file} (or flags)"
    for key, value in overrides.items():
        if value is not None:
            _set_dotted(data, key, value)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise PersonalignError(format_validation_error(exc, source)) from None
