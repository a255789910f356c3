"""Typed, serializable configs: defaults, then a YAML file, then CLI flags (dotted keys for nesting)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal, Self, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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


class TinkerSettings(Config):
    """How `backend: tinker` and the `tinker` engine reach a Tinker-API service (Tinker, or a local skyrl-tx)."""

    base_url: str | None = Field(None, description="service URL; None = TINKER_BASE_URL, else the Tinker cloud "
                                 "(a local skyrl-tx server: http://127.0.0.1:PORT)")
    api_key_env: str = Field("TINKER_API_KEY", description="environment variable holding the key (tml-...)")
    timeout_s: float = Field(10.0, gt=0, description="the health check made before anything else")


DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


class ModelConfig(Config):
    """Which generator to load and how."""

    model: str = Field("default", description="'default' (embedded SmolLM2-135M-Instruct), a hub id or a folder; "
                       "with backend openai, the server's model name")
    backend: Literal["hf", "openai", "tinker"] = "hf"
    openai: OpenAISettings = Field(default_factory=OpenAISettings, description="used by backend: openai")
    tinker: TinkerSettings = Field(default_factory=TinkerSettings, description="used by backend: tinker")
    dtype: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto = bf16 where the CPU/GPU supports it (≈2× faster generation here), else fp32"
    )
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, ...")
    adapter: str | None = Field(None, description="folder of a LoRA adapter to load on top")
    batch_size: int | None = Field(
        None, ge=1, description="sequences per generation batch; None = 8 on CPU, 64 on a GPU (launch-bound there)"
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not DEVICE_PATTERN.fullmatch(value):
            raise ValueError(f"unknown device {value!r}; use auto, cpu, cuda, cuda:N or mps")
        return value


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


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model class a field holds (also inside `X | None`), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def field_paths(cls: type[BaseModel], prefix: str = "") -> list[str]:
    """Every settable dotted field of `cls`, nested configs included: 'sampling.max_new_tokens', ..."""
    paths = []
    for name, info in cls.model_fields.items():
        sub = _submodel(info.annotation)
        paths.append(prefix + name)
        if sub is not None:
            paths += field_paths(sub, f"{prefix}{name}.")
    return paths


MISSING = object()


def field_default(cls: type[BaseModel], dotted: str) -> Any:
    """The default of a dotted field (MISSING when the field is required or unknown)."""
    head, _, rest = dotted.partition(".")
    info = cls.model_fields.get(head)
    if info is None or info.is_required():
        return MISSING
    value = info.get_default(call_default_factory=True)
    for key in rest.split(".") if rest else []:
        if isinstance(value, BaseModel):
            value = getattr(value, key, MISSING)
        elif isinstance(value, dict):
            value = value.get(key, MISSING)
        else:
            return MISSING
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def flag_name(dotted: str, flags: dict[str, str] | None = None) -> str:
    """How the user names a field: the command's flag for it (`flags`, else '--last-part' when the running
    command has that option), else the dotted field itself (library calls, `--set` keys)."""
    if flags and dotted in flags:
        return flags[dotted]
    guess = "--" + dotted.rsplit(".", 1)[-1].replace("_", "-")
    try:
        from typer._click.globals import get_current_context  # typer vendors click
    except ImportError:
        return dotted
    ctx = get_current_context(silent=True)
    options = {opt for param in getattr(ctx, "command", None).params for opt in getattr(param, "opts", ())} \
        if ctx is not None else set()
    return guess if guess in options else dotted


def aliases(cls: type[BaseModel], flags: dict[str, str] | None = None) -> dict[str, str]:
    """Top-level names a config file may use for nested fields: each flag name (`max_new_tokens:` for
    `sampling.max_new_tokens`), so a file accepts the same names as the command line."""
    top = set(cls.model_fields)
    out: dict[str, str] = {}
    leaves: dict[str, list[str]] = {}
    for path in field_paths(cls):
        if "." in path:
            leaves.setdefault(path.rsplit(".", 1)[-1], []).append(path)
    for leaf, paths in leaves.items():
        if leaf not in top and len(paths) == 1:
            out[leaf] = paths[0]
    for dotted, flag in (flags or {}).items():
        name = flag.lstrip("-").replace("-", "_")
        if name not in top and "." in dotted:
            out[name] = dotted
    return out


def suggest(word: str, choices: Any) -> str:
    """' (did you mean `x`?)' for the closest valid name, or ''."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


def _clean_msg(msg: str) -> str:
    # pydantic prefixes custom validator messages with "Value error, " / "Assertion failed, ".
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    return msg


def format_validation_error(
    exc: ValidationError, source: str, flags: dict[str, str] | None = None, cls: type[BaseModel] | None = None,
) -> str:
    """One line per problem: where (as the flag the user typed, when a flag set it), what is wrong, the fix."""
    parts = []
    valid = [*field_paths(cls), *aliases(cls)] if cls is not None else []
    for err in exc.errors():
        dotted = ".".join(str(p) for p in err["loc"]) or "(top level)"
        where = flags.get(dotted, dotted) if flags else dotted
        if err["type"] == "extra_forbidden":
            parts.append(f"{where}: unknown key{suggest(dotted, valid)}; remove it or check its spelling")
        elif err["type"] == "missing":
            parts.append(f"{where}: required; set it")
        else:
            parts.append(f"{where}: {_clean_msg(err['msg'])} (got {err.get('input')!r})")
    return f"{source}: " + "; ".join(parts)


C = TypeVar("C", bound=BaseModel)


def _apply_aliases(loaded: dict[str, Any], cls: type[BaseModel], names: dict[str, str]) -> dict[str, Any]:
    """Rewrite flag-style top-level keys (`max-new-tokens`, `max_new_tokens`) to their dotted fields."""
    out: dict[str, Any] = {}
    for key, value in loaded.items():
        norm = str(key).replace("-", "_")
        if norm in cls.model_fields:
            out[norm] = _deep_merge(out[norm], value) if isinstance(value, dict) and isinstance(
                out.get(norm), dict) else value
        elif norm in names:
            _set_dotted(out, names[norm], value)
        else:
            out[key] = value  # unknown: validation reports it with the closest valid name
    return out


def resolve_config(
    cls: type[C], config_file: str | Path | None, overrides: dict[str, Any], defaults: dict[str, Any] | None = None,
    flags: dict[str, str] | None = None,
) -> C:
    """Build `cls` from its defaults (or `defaults`), a YAML file, then non-None overrides (keys may be dotted).

    The file may use flag names at its top level (`max_new_tokens: 64`). Errors name a field by the flag that
    set it (`flags`: dotted field → flag, default `--last-part`) and suggest the closest valid name.
    """
    data: dict[str, Any] = copy.deepcopy(defaults or {})  # dotted overrides write into nested dicts
    source = "command-line flags"
    names = aliases(cls, flags)
    if config_file:
        loaded = read_yaml(config_file)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise PersonalignError(f"{config_file}: expected a mapping of config fields at the top level")
        data = _deep_merge(data, _apply_aliases(loaded, cls, names))
        source = f"{config_file} (or flags)"
    given = {key: value for key, value in overrides.items() if value is not None}
    for key, value in given.items():
        _set_dotted(data, key, value)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        named = {key: flag_name(key, flags) for key in given}
        raise PersonalignError(format_validation_error(exc, source, named, cls)) from None
